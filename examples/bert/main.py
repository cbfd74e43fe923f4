"""LightningCLI entry point for the GLUE BERT example (run from the repository root).

    python examples/bert/main.py fit --config examples/bert/configs/dense.yaml --data.data_dir data/glue
    python examples/bert/main.py fit --config examples/bert/configs/snip_momentum_4x1.yaml --data.data_dir data/glue
    python examples/bert/main.py fit --help

``data.task`` also sets the model's metrics and ``model.model_name_or_path`` also picks the tokenizer
(linked arguments: set them once).  Compression methods are Trainer callbacks in the YAML.
With ``HF_HUB_OFFLINE=1`` nothing is fetched from the hub.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python examples/bert/main.py` puts only examples/bert on sys.path
    sys.path.insert(0, str(ROOT))

import lightning_compress  # noqa: E402,F401  (registers the deepspeed_compression strategies)
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from examples.bert.data import GlueDataModule  # noqa: E402
from examples._help import fit_parser_kwargs  # noqa: E402
from examples._quiet import hide_lightning_tips  # noqa: E402
from examples.bert.model import GlueBert  # noqa: E402

try:
    from lightning_compress.strategies import register as _register_strategies

    _register_strategies()
except ImportError:  # pragma: no cover
    pass


class GlueCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        parser.link_arguments("data.task", "model.task")
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.add_argument("--run_test", type=bool, default=False, help="evaluate the dev split again after fit")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("run_test", False) and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)


def cli_main(args: list[str] | None = None, run: bool = True) -> GlueCLI:
    hide_lightning_tips()
    return GlueCLI(
        GlueBert,
        GlueDataModule,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=fit_parser_kwargs(),
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
