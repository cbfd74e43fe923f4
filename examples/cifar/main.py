"""LightningCLI entry point for the CIFAR ResNet example (run from the repository root).

    python examples/cifar/main.py fit --config examples/cifar/configs/dense.yaml
    python examples/cifar/main.py fit --config examples/cifar/configs/snip_momentum_4x1.yaml \
        --data.data_dir data/cifar10 --trainer.max_epochs 30
    python examples/cifar/main.py fit --help             # every model/data/trainer argument
    python examples/cifar/main.py fit --config ... --print_config

Compression methods are Trainer callbacks in the YAML (``trainer.callbacks: [{class_path, init_args}]``).
After ``fit`` the test split is evaluated (``--run_test false`` to skip).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python examples/cifar/main.py` puts only examples/cifar on sys.path
    sys.path.insert(0, str(ROOT))

import lightning_compress  # noqa: E402,F401  (registers the deepspeed_compression strategies)
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from examples.cifar.data import CifarDataModule  # noqa: E402
from examples._help import fit_parser_kwargs  # noqa: E402
from examples._quiet import hide_lightning_tips  # noqa: E402
from examples.cifar.model import CifarResNet  # noqa: E402

try:  # strategy names are registered by lightning_compress/__init__.py once the package exports them
    from lightning_compress.strategies import register as _register_strategies

    _register_strategies()
except ImportError:  # pragma: no cover
    pass


class CifarCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--run_test", type=bool, default=True, help="evaluate the test split after fit")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("run_test", True) and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)


def cli_main(args: list[str] | None = None, run: bool = True) -> CifarCLI:
    hide_lightning_tips()
    return CifarCLI(
        CifarResNet,
        CifarDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=fit_parser_kwargs(),
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
