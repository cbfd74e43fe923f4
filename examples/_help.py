"""``fit --help`` of the example CLIs ends with every callback's example, taken from its class docstring.

jsonargparse prints only the first docstring line of a class (``--trainer.callbacks.help NAME``), so the
examples live in the class docstrings (where ``tests/test_callback_examples.py`` runs each one) and this
module copies them into the ``fit`` subcommand's epilog: the code the user sees in ``--help`` is the code
that is tested.
"""

from __future__ import annotations

import argparse
import re
import textwrap

from jsonargparse import DefaultHelpFormatter

CALLBACKS = (
    "SparsePruning", "SnipMomentumPruning", "RowPruning", "HeadPruning", "ChannelPruning",
    "WeightQuant", "ActQuant", "LayerReductionKD", "OneShotCompression", "RedundancyClean",
)
EXAMPLE = re.compile(r"^    Example[^\n]*::\n\n(?P<body>(?:        [^\n]*\n|\n)+)", re.MULTILINE)
LOAD = 'torch.export.load("slim/model.pt2")'


def docstring_example(cls: type) -> str:
    """The code of the one ``Example...::`` block of ``cls.__doc__``, dedented."""
    doc = cls.__doc__ or ""
    matches = EXAMPLE.findall(doc if doc.endswith("\n") else doc + "\n")
    if len(matches) != 1:
        raise ValueError(f"{cls.__name__}: expected one 'Example...::' block in the docstring, found {len(matches)}")
    return textwrap.dedent(matches[0]).strip("\n") + "\n"


def _own_lines(code: str) -> list[str]:
    """The example without its imports and the slim-loading lines every example shares."""
    return [line for line in code.splitlines()
            if line.strip() and not line.startswith(("import ", "from ")) and LOAD not in line and "slim(x)" not in line]


def callbacks_epilog() -> str:
    import lightning_compress

    parts = ["compression callbacks (trainer.callbacks in the YAML; `--trainer.callbacks.help lightning_compress.NAME`"
             " lists NAME's arguments). Each one in Python (model, datamodule: yours):", ""]
    for name in CALLBACKS:
        cls = getattr(lightning_compress, name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        parts += [f"  {name}: {summary}"] + [f"      {line}" for line in _own_lines(docstring_example(cls))]
    parts += ["", "  (imports: `import torch`, `from lightning.pytorch import Trainer`, `from lightning_compress import ...`)",
              "", "the slim result, in any process, without your model's code:",
              '      slim = torch.export.load("slim/model.pt2").module()',
              "      y = slim(x)  # x: a batch of inputs",
              "  The program was exported in eval mode: call it as it is. It cannot .eval() (torch 2.14 raises",
              "  NotImplementedError on an exported GraphModule; torch.ao.quantization.move_exported_model_to_eval",
              "  no longer exists). Weights alone: lightning_compress.load_slim_state('slim/model.safetensors')."]
    return "\n".join(parts)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the epilog's line breaks (argparse re-wraps it otherwise)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)  # type: ignore[arg-type]


def fit_parser_kwargs() -> dict:
    """``LightningCLI(parser_kwargs=...)``: the epilog on ``fit``, the formatter on every parser (jsonargparse
    gives subcommand parsers the main parser's formatter)."""
    return {"formatter_class": HelpFormatter, "fit": {"epilog": callbacks_epilog(), "formatter_class": HelpFormatter}}
