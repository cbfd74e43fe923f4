"""``examples/plain_pytorch.py``: pruning + QAT + clean from a plain loop, with ``lightning`` unimportable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_lazy_import import BLOCK_LIGHTNING

ROOT = Path(__file__).resolve().parents[1]


def test_plain_pytorch_example_runs_without_lightning() -> None:
    code = BLOCK_LIGHTNING + (
        "import runpy, sys\n"
        "sys.argv = ['plain_pytorch.py', '--steps', '60', '--sparsity', '0.5']\n"
        "runpy.run_path('examples/plain_pytorch.py', run_name='__main__')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'lightning'], 'lightning was imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    m = re.search(r"sparsity=(\d\.\d{3})$", last)
    assert m, last
    assert abs(float(m.group(1)) - 0.5) < 0.01, last
    assert "max |slim - masked| = 0.00e+00" in proc.stdout, proc.stdout
