"""README.md's runnable code blocks run as written (CPU, tiny stand-ins; see tests/readme_blocks.py).

The first block is the project's headline usage, ``Trainer(callbacks=[SnipMomentumPruning(pattern="4x1",
sparsity=0.9)], strategy="deepspeed")``: it runs verbatim in a fresh interpreter on this CPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.readme_blocks import FRESH, PRELUDE, ROOT, STOP_AFTER, runnable_blocks

README = (ROOT / "README.md").read_text()
DIST_VARS = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
             "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED"}

# Blocks run in order in one interpreter (the first one in a fresh one: its own imports register our
# strategy names), each with new stand-ins; after each, what must hold goes to stdout as a JSON line.
CHECKS = {
    0: """
from lightning_compress import DeepSpeedCompressionStrategy
cb = trainer.callbacks[0]
print("CHECK", json.dumps({"strategy": type(trainer.strategy).__name__, "accelerator": type(trainer.accelerator).__name__,
    "stage": trainer.strategy.config["zero_optimization"]["stage"], "step": trainer.global_step,
    "events": len(cb.history), "targets": [t.name for t in cb.targets]}))
""",
    1: """
print("CHECK", json.dumps({"type": type(slim).__name__, "shape": list(y.shape), "finite": bool(torch.isfinite(y).all()),
    "files": sorted(p.name for p in __import__("pathlib").Path("slim").iterdir())}))
""",
}


def run_blocks(tmp_path) -> list[dict]:
    blocks = runnable_blocks(README)
    script = ["import json", PRELUDE]
    for i, (line, _names, code) in enumerate(blocks):
        script.append(FRESH)
        script.append(f"# README.md:{line}\nexec(compile({code!r}, 'README.md:{line}', 'exec'))")
        script.append(textwrap.dedent(CHECKS.get(i, "print('CHECK', json.dumps({}))")))
    # a fresh interpreter as a user's: without the torch.distributed variables an earlier in-process fit of
    # this pytest process left in os.environ (its MASTER_PORT is still bound here: EADDRINUSE otherwise)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    checks = [json.loads(line[len("CHECK "):]) for line in proc.stdout.splitlines() if line.startswith("CHECK ")]
    assert len(checks) == len(blocks), proc.stdout
    return checks


def test_readme_has_the_headline_block_first() -> None:
    blocks = runnable_blocks(README)
    assert len(blocks) >= 2
    _, names, code = blocks[0]
    assert names == {"model", "datamodule"}
    assert 'Trainer(callbacks=[SnipMomentumPruning(pattern="4x1", sparsity=0.9)], strategy="deepspeed")' in code
    assert README.index(code) < README.index("## The two commands")


def test_readme_runnable_blocks_run_as_written(tmp_path) -> None:
    checks = run_blocks(tmp_path)
    head = checks[0]
    # strategy="deepspeed" on this CPU machine: our subclass, ZeRO 2, one CPU process
    assert head["strategy"] == "DeepSpeedCompressionStrategy" and head["accelerator"] == "CPUAccelerator"
    assert head["stage"] == 2 and head["step"] == STOP_AFTER
    # the callback pruned under it: prune events ran on the two hidden Linear layers (the classifier is
    # left alone); their sparsity is still small, as the schedule ends at the fit's last step (Lightning's
    # default max_epochs=1000), which the tiny model does not reach
    assert head["events"] >= 1 and head["targets"] == ["net.0", "net.2"]
    slim = checks[1]
    assert slim["type"] == "GraphModule" and slim["shape"] == [5, 4] and slim["finite"]
    assert {"model.pt2", "model.safetensors", "report.json"} <= set(slim["files"])
