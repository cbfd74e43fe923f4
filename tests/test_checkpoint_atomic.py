"""Atomic DeepSpeed checkpoints: manifest, swap, torn-checkpoint refusal (unit) and a simulated kill
under DeepSpeedCompressionStrategy, ZeRO 2, 2 CPU ranks (scenario in distributed/scenarios_checkpoint.py)."""

from __future__ import annotations

import pytest

from lightning_compress.strategies import checkpoint_files as cf


def _folder(path, step, payload):
    (path / "checkpoint").mkdir(parents=True)
    (path / "checkpoint" / "model_states.pt").write_bytes(payload)
    (path / "checkpoint" / "optim_0.pt").write_bytes(payload * 2)
    (path / "latest").write_text("checkpoint")
    cf.write_manifest(path, step)
    return path


def test_manifest_verifies_and_names_torn_parts(tmp_path):
    a = _folder(tmp_path / "a", 2, b"step two")
    b = _folder(tmp_path / "b", 4, b"step 4!!")
    assert cf.verify(a)["step"] == 2 and set(cf.verify(b)["parts"]) == {"checkpoint/model_states.pt", "checkpoint/optim_0.pt", "latest"}
    (b / "checkpoint" / "optim_0.pt").write_bytes((a / "checkpoint" / "optim_0.pt").read_bytes())  # same size, other step
    with pytest.raises(ValueError, match=r"torn.*checkpoint/optim_0\.pt: content differs from what the save of step 4"):
        cf.verify(b)
    (b / "checkpoint" / "model_states.pt").write_bytes(b"trunc")
    (b / "checkpoint" / "extra.pt").write_bytes(b"x")
    with pytest.raises(ValueError) as err:
        cf.verify(b)
    msg = str(err.value)
    assert "model_states.pt: 5 bytes" in msg and "extra.pt: not written by the save of step 4" in msg
    (b / cf.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="manifest lc_manifest.json is unreadable"):
        cf.verify(b)
    assert cf.verify(tmp_path) is None  # no manifest: cannot be checked


def test_swap_in_replaces_whole_and_discard(tmp_path):
    target = _folder(tmp_path / "last.ckpt", 2, b"old")
    (target / "checkpoint" / "stale_only_in_old.pt").write_bytes(b"s")
    cf.write_manifest(target, 2)
    partial = _folder(cf.partial_path(target, "tok"), 4, b"new")
    cf.swap_in(partial, target, "tok")
    assert cf.verify(target)["step"] == 4 and not (target / "checkpoint" / "stale_only_in_old.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    leftover = _folder(cf.partial_path(target, "t2"), 6, b"half")
    cf.discard(leftover)
    assert not leftover.exists() and cf.verify(target)["step"] == 4


def test_kill_during_save_keeps_last_complete_and_torn_is_refused(dist_results):
    r0, r1 = dist_results("checkpoint_atomic_zero2")
    for r in (r0, r1):
        assert len(r["killed"]) == 2 and all("simulated kill" in k for k in r["killed"])
        # after either kill last.ckpt is still the complete checkpoint of step 2 (verified against its manifest)
        assert r["manifest_steps"] == [2, 2]
        assert r["resumed_step"] == 5
        # the torn checkpoint is refused on every rank, naming the foreign part
        assert r["refused"] is not None and "torn" in r["refused"] and r["shard"] in r["refused"]
        assert r["step_after_next_save"] == 5
    # what the killed save left (if anything) is gone after the next save
    assert all("last.ckpt.lc-" in n for n in r0["leftovers"]) and r0["leftovers_after_next_save"] == []
    assert r0["refused"] == r1["refused"]
    assert "checkpoint/mp_rank_00_model_states.pt" in r0["manifest_parts"]
    assert any("zero_pp_rank_1" in p for p in r0["manifest_parts"])
