"""Shared fixtures. ``dist_results`` runs every DeepSpeed scenario once per session (2 CPU ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dist_results(tmp_path_factory):
    """``dist_results("name")`` -> list of per-rank results of a scenario in tests/distributed."""
    out = tmp_path_factory.mktemp("dist")
    only = os.environ.get("LC_DIST_SCENARIOS", "").split()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), LC_TEST_OUT=str(out))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(29500 + os.getpid() % 1000), str(ROOT / "tests" / "distributed" / "runner.py"), str(out), *only,
    ]
    log = out / "runner.log"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=1800, cwd=ROOT, env=env)

    def get(name: str) -> list:
        results = []
        for rank in range(2):
            err = out / f"{name}.rank{rank}.error.txt"
            if err.exists():
                pytest.fail(f"scenario {name!r} failed on rank {rank}:\n{err.read_text()}")
            path = out / f"{name}.rank{rank}.pt"
            if not path.exists():
                tail = log.read_text()[-6000:]
                pytest.fail(f"scenario {name!r} left no result on rank {rank} (runner exit {proc.returncode}):\n{tail}")
            results.append(torch.load(path, weights_only=False))
        return results

    return get
