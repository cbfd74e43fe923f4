"""Run every registered scenario under one 2-process group: ``torchrun --nproc_per_node 2 runner.py OUT [names]``."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.distributed.harness import SCENARIOS, Context, run_one  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    wanted = sys.argv[2:]
    for f in sorted((ROOT / "tests" / "distributed").glob("scenarios_*.py")):
        importlib.import_module(f"tests.distributed.{f.stem}")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    names = sorted(SCENARIOS) if not wanted else [n for n in sorted(SCENARIOS) if n in wanted]
    import torch.distributed as dist

    for name in names:
        run_one(name, Context(name=name, rank=rank, world_size=world, out_dir=out))
        if dist.is_initialized():
            dist.barrier()
        (out / f"{name}.rank{rank}.done").write_text("ok")


if __name__ == "__main__":
    main()
