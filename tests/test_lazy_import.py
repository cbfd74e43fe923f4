"""``import lightning_compress`` without lightning, and strategy names registered when Lightning loads.

Each check runs in a fresh interpreter, so what is imported is exactly what the package imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning_compress

ROOT = Path(__file__).resolve().parents[1]

# makes `lightning` (and the standalone packages) unimportable, as if not installed
BLOCK_LIGHTNING = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""


def run_python(code: str, block_lightning: bool = False) -> str:
    code = (BLOCK_LIGHTNING if block_lightning else "") + textwrap.dedent(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_package_core_and_export_without_lightning() -> None:
    out = run_python("""
    import importlib, pkgutil
    import lightning_compress
    assert "lightning" not in sys.modules and "torch" not in sys.modules
    import lightning_compress.core as core
    for mod in pkgutil.walk_packages(core.__path__, "lightning_compress.core."):
        importlib.import_module(mod.name)
    from lightning_compress.export import clean
    from lightning_compress import quantize
    assert callable(clean) and lightning_compress.clean is clean
    try:
        lightning_compress.SparsePruning
    except ImportError as err:
        assert "needs the `lightning` package" in str(err), err
    else:
        raise AssertionError("SparsePruning resolved without lightning")
    assert not [m for m in sys.modules if m.split(".")[0] == "lightning"]
    print("ok")
    """, block_lightning=True)
    assert out.strip().endswith("ok")


def test_import_then_trainer_finds_the_strategy_name() -> None:
    out = run_python("""
    import sys
    import lightning_compress
    assert "lightning" not in sys.modules  # registration waits for Lightning
    from lightning.pytorch import Trainer
    trainer = Trainer(strategy="deepspeed_compression", accelerator="cpu", devices=1, logger=False)
    from lightning_compress import DeepSpeedCompressionStrategy
    assert isinstance(trainer.strategy, DeepSpeedCompressionStrategy)
    assert trainer.strategy.config["zero_optimization"]["stage"] == 2
    import lightning.pytorch.strategies as strategies
    assert type(strategies.__loader__).__name__ == "SourceFileLoader"  # the hook put the loader back
    assert not [f for f in sys.meta_path if type(f).__name__ == "_AfterImport"]  # and left
    print("ok")
    """)
    assert out.strip().endswith("ok")


def test_public_names_resolve_and_are_listed() -> None:
    assert set(lightning_compress.__all__) <= set(dir(lightning_compress))
    for name in lightning_compress.__all__:
        assert getattr(lightning_compress, name) is not None, name
    assert lightning_compress.core.__name__ == "lightning_compress.core"
