"""Probe every public callback, driver and PTQ function with bad or unusual arguments (issue 11, item 4).

    PYTHONPATH=$PWD python scripts/probe_arguments.py            # the named probes (fits tiny models)
    PYTHONPATH=$PWD python scripts/probe_arguments.py --fuzz     # constructor fuzz, one argument at a time

Each named probe is a bad input; the outcome is one of

* ``silent``: no error at all (the worst: a wrong result without a word);
* ``crash``: an error that is not ValueError/TypeError, or whose message does not name the owner
  (callback / function) and the argument;
* ``late``: a clear error, but only after training started (a batch ran);
* ``early``: a ValueError/TypeError naming owner and argument, raised in ``__init__``, ``setup`` or
  ``on_train_start`` (before the first batch).

``--fuzz`` substitutes each argument of each constructor with each value of a pool (wrong types, edge
values, strings, None, lists, bools) and counts constructions that raise an error not naming the argument.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import lightning_compress as lc  # noqa: E402
from lightning_compress.core.act_quantizer import ActQuantizer  # noqa: E402
from lightning_compress.core.pruner import Pruner  # noqa: E402
from lightning_compress.core.weight_quantizer import WeightQuantizer  # noqa: E402
from tests.models import TinyMLP, image_loader, mlp_loader  # noqa: E402
from tests.structured_models import TinyMHA, TinyResNet  # noqa: E402

import logging  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning").setLevel(logging.ERROR)


class StackNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(4)])
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.out(h)


class TinyStack(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = StackNet()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def mha_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 5, 8, generator=g), torch.randint(0, 2, (32,), generator=g)), batch_size=8)


MODELS = {
    "mlp": (TinyMLP, mlp_loader),
    "cnn": (TinyResNet, image_loader),
    "mha": (TinyMHA, mha_loader),
    "stack": (TinyStack, mlp_loader),
}
CALLBACK_MODEL = {
    "SparsePruning": "mlp", "SnipMomentumPruning": "mlp", "RowPruning": "mlp", "ChannelPruning": "cnn",
    "HeadPruning": "mha", "WeightQuant": "mlp", "ActQuant": "mlp", "LayerReductionKD": "stack", "RedundancyClean": "mlp",
}


class _Started(pl.Callback):
    started = False

    def on_train_batch_start(self, *a, **k):  # noqa: ANN002,ANN003
        type(self).started = True


def classify(err: BaseException | None, owner: str, arg: str, late: bool) -> str:
    if err is None:
        return "silent"
    msg = str(err)
    if not isinstance(err, (ValueError, TypeError)) or owner not in msg or f"`{arg.split('[')[0]}" not in msg:
        return "crash"
    return "late" if late else "early"


def fit(callbacks, model_kind: str, steps: int = 4):  # noqa: ANN001,ANN201
    cls, loader = MODELS[model_kind]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[*callbacks, _Started()],
    )
    trainer.fit(cls(), loader())
    return trainer


def cb_probe(name: str, arg: str, kwargs: dict, extra=None, steps: int = 4):  # noqa: ANN001,ANN201
    """A callback probe: construct, then fit a tiny model with it."""

    def run() -> tuple[BaseException | None, bool]:
        _Started.started = False
        try:
            cb = getattr(lc, name)(**kwargs)
            cbs = [cb] + ([extra()] if extra else [])
            if name == "RedundancyClean":
                cbs = [lc.SparsePruning(sparsity=0.5)] + cbs
            trainer = fit(cbs, CALLBACK_MODEL[name], steps)
            _post_check(cb, trainer)
        except BaseException as err:  # noqa: BLE001
            return err, _Started.started
        return None, False

    return (name, arg, kwargs, run)


def _post_check(cb, trainer) -> None:  # noqa: ANN001
    """After a fit with a bad schedule: a schedule that did not finish raises nothing by itself."""


def fn_probe(name: str, arg: str, kwargs: dict, call):  # noqa: ANN001,ANN201
    def run() -> tuple[BaseException | None, bool]:
        try:
            call(**kwargs)
        except BaseException as err:  # noqa: BLE001
            return err, False
        return None, False

    return (name, arg, kwargs, run)


def _net() -> nn.Module:
    return TinyMLP().net


def pruner(**kw):  # noqa: ANN003,ANN201
    p = Pruner(_net(), **kw)
    p.resolve_end_step(4)
    for s in range(4):
        p.update_scores()
        p.step(s)
    return p


def wquantizer(**kw):  # noqa: ANN003,ANN201
    return WeightQuantizer(_net(), **kw)


def aquantizer(**kw):  # noqa: ANN003,ANN201
    return ActQuantizer(_net(), **kw)


def quantize(**kw):  # noqa: ANN003,ANN201
    return lc.quantize(_net(), **kw)


def zeroquant(**kw):  # noqa: ANN003,ANN201
    kw.setdefault("group_size", 16)
    return lc.zeroquant(_net(), **kw)


PRUNING_BAD = [
    ("sparsity", "0.5"), ("sparsity", True), ("sparsity", 1.0), ("sparsity", -0.1), ("sparsity", [0.5]),
    ("sparsity", float("nan")), ("method", "nope"), ("method", 3), ("schedule", "nope"), ("schedule", None),
    ("start_step", 1.7), ("start_step", -1), ("start_step", "0"), ("start_step", True), ("start_step", None),
    ("end_step", 2.5), ("end_step", "3"), ("end_step", -1), ("end_step", 1000), ("end_step", True),
    ("frequency", True), ("frequency", 0), ("frequency", 1.5), ("frequency", "1"), ("frequency", None),
    ("scope", "nope"), ("scope", None), ("max_sparsity_per_layer", "0.9"), ("max_sparsity_per_layer", 0.0),
    ("max_sparsity_per_layer", True), ("modules", []), ("modules", 5), ("modules", ["("]), ("modules", [3]),
    ("modules", ["no_such_module"]), ("exclude", [".*"]), ("exclude", ["("]), ("exclude", 5), ("groups", []),
    ("groups", {"a": 3}), ("groups", {"a": {"modules": []}}), ("groups", {"a": {"sparsity": "0.5"}}),
    ("groups", {"a": {"modules": ["("]}}), ("groups", "a"),
]
SPARSE_ONLY_BAD = [("pattern", "0:4"), ("pattern", "5:4"), ("pattern", "banana"), ("pattern", 4), ("pattern", "3x1")]
WQ_BAD = [
    ("bits", "8"), ("bits", True), ("bits", 8.0), ("bits", 5), ("bits", None), ("start_bits", "8"), ("start_bits", 2),
    ("start_bits", 8.0), ("period", 10), ("period", 0), ("period", True), ("period", "10"), ("granularity", "row"),
    ("granularity", None), ("group_size", 7), ("group_size", "16"), ("group_size", True), ("symmetric", "no"),
    ("symmetric", 0), ("symmetric", None), ("modules", []), ("modules", ["("]), ("modules", 5), ("exclude", [".*"]),
    ("exclude", ["("]), ("start_step", 1.7), ("start_step", "0"), ("start_step", True), ("start_step", -1),
    ("start_step", 1000),
]
AQ_BAD = [
    ("bits", "8"), ("bits", True), ("bits", 3), ("bits", 8.0), ("range", "nope"), ("range", None), ("symmetric", "no"),
    ("symmetric", 1), ("modules", []), ("modules", ["("]), ("modules", 5), ("exclude", [".*"]), ("exclude", ["("]),
    ("momentum", "0.9"), ("momentum", 1.0), ("momentum", True), ("momentum", -0.1), ("momentum", None),
]
KD_BAD = [
    ("teacher", "bert"), ("keep_layers", True), ("keep_layers", 0), ("keep_layers", []), ("keep_layers", "3"),
    ("keep_layers", [1, 1]), ("keep_layers", [1.5]), ("keep_layers", [9]), ("keep_layers", 9), ("layers", 3),
    ("layers", "no.such.layers"), ("temperature", True), ("temperature", "2"), ("temperature", 0),
    ("weights", {"logits": "1"}), ("weights", {"logits": True}), ("weights", {"nope": 1.0}), ("weights", "logits"),
    ("copy_modules", ["classifier"]),
]
RC_BAD = [
    ("formats", []), ("formats", ["pdf"]), ("formats", 3), ("latency_runs", -1), ("latency_runs", "3"),
    ("latency_runs", True), ("latency_runs", 2.5), ("save", "no"), ("save", 0), ("fold_batchnorm", "yes"),
    ("output_dir", 3), ("output_dir", None),
]
DRIVER_PRUNER_BAD = [
    ("sparsity", "0.5"), ("sparsity", True), ("start_step", 1.7), ("start_step", 0.5), ("end_step", 2.5), ("frequency", True),
    ("frequency", 1.5), ("modules", []), ("modules", ["("]), ("exclude", [".*"]), ("pattern", "0:4"), ("scope", 3),
    ("max_sparsity_per_layer", "0.9"),
]
PTQ_BAD = [
    ("weight_bits", "8"), ("weight_bits", True), ("act_bits", 8.0), ("observer", "nope"), ("granularity", 3),
    ("symmetric", "no"), ("act_symmetric", "yes"), ("modules", []), ("modules", ["("]), ("exclude", [".*"]),
    ("num_batches", True), ("num_batches", 0), ("inplace", "no"), ("group_size", "64"), ("forward_fn", 3),
]
ZQ_BAD = [("weight_bits", "8"), ("weight_bits", 2), ("group_size", True), ("group_size", 0), ("int4_modules", []),
          ("int4_modules", ["("]), ("int4_modules", "net"), ("act_bits", "8"), ("modules", []), ("inplace", 1)]


def named_probes() -> list:
    tmp = tempfile.mkdtemp()
    probes = []
    for name in ("SparsePruning", "SnipMomentumPruning", "RowPruning", "ChannelPruning", "HeadPruning"):
        bad = PRUNING_BAD + (SPARSE_ONLY_BAD if "Sparse" in name or "Snip" in name else [])
        for arg, value in bad:
            if name == "SnipMomentumPruning" and arg == "method":
                continue
            probes.append(cb_probe(name, arg, {arg: value}))
    probes.append(cb_probe("RowPruning", "related_modules", {"related_modules": {"net.0": 3}}))
    probes.append(cb_probe("RowPruning", "related_modules", {"related_modules": {"(": ["net.2"]}}))
    probes.append(cb_probe("RowPruning", "related_modules", {"related_modules": "net.0"}))
    for arg, value in WQ_BAD:
        probes.append(cb_probe("WeightQuant", arg, {arg: value, **({"granularity": "group"} if arg == "group_size" else {})}))
    for arg, value in AQ_BAD:
        probes.append(cb_probe("ActQuant", arg, {arg: value}))
    for arg, value in KD_BAD:
        probes.append(cb_probe("LayerReductionKD", arg, {"keep_layers": 2, "layers": "layers", arg: value}))
    for arg, value in RC_BAD:
        kw = {"output_dir": f"{tmp}/rc_{len(probes)}", "latency_runs": 0, "formats": ["safetensors"], arg: value}
        probes.append(cb_probe("RedundancyClean", arg, kw))
    probes.append(cb_probe(
        "RedundancyClean", "output_dir", {"output_dir": f"{tmp}/same", "formats": ["safetensors"], "latency_runs": 0},
        extra=lambda: lc.RedundancyClean(f"{tmp}/same", formats=["safetensors"], latency_runs=0),
    ))
    for arg, value in DRIVER_PRUNER_BAD:
        probes.append(fn_probe("Pruner", arg, {arg: value}, pruner))
    for arg, value in [(a, v) for a, v in WQ_BAD if a not in ("start_step",) or v != 1000]:
        kw = {arg: value, **({"granularity": "group"} if arg == "group_size" else {})}
        probes.append(fn_probe("WeightQuantizer", arg, kw, wquantizer))
    for arg, value in AQ_BAD:
        probes.append(fn_probe("ActQuantizer", arg, {arg: value}, aquantizer))
    for arg, value in PTQ_BAD:
        probes.append(fn_probe("quantize", arg, {arg: value, **({"granularity": "group"} if arg == "group_size" else {})}, quantize))
    for arg, value in ZQ_BAD:
        probes.append(fn_probe("zeroquant", arg, {arg: value}, zeroquant))
    return probes


# ------------------------------------------------------------------------------------------ fuzz
POOL = [None, True, False, 0, 1, -1, 2, 7, 1000, 0.0, 0.5, 1.0, 1.5, -0.5, float("nan"), "", "x", "0.5", "8", "(",
        [], ["("], [1], ["x"], {}, {"a": 1}, (1, 2), object()]
CONSTRUCTORS = {
    "SparsePruning": ["sparsity", "method", "pattern", "schedule", "start_step", "end_step", "frequency", "scope",
                      "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "SnipMomentumPruning": ["sparsity", "pattern", "schedule", "start_step", "end_step", "frequency", "scope",
                            "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "RowPruning": ["sparsity", "method", "schedule", "start_step", "end_step", "frequency", "scope",
                   "max_sparsity_per_layer", "modules", "exclude", "groups", "related_modules"],
    "ChannelPruning": ["sparsity", "method", "schedule", "start_step", "end_step", "frequency", "scope",
                       "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "HeadPruning": ["sparsity", "method", "schedule", "start_step", "end_step", "frequency", "scope",
                    "max_sparsity_per_layer", "modules", "exclude", "groups"],
    "WeightQuant": ["bits", "start_bits", "period", "granularity", "group_size", "symmetric", "modules", "exclude", "start_step"],
    "ActQuant": ["bits", "range", "symmetric", "modules", "exclude", "momentum"],  # (the constructors as of the issue)
    "LayerReductionKD": ["teacher", "keep_layers", "layers", "copy_modules", "temperature", "weights"],
    "RedundancyClean": ["output_dir", "formats", "example_input", "latency_runs", "save", "fold_batchnorm"],
}


def fuzz() -> Counter:
    counts: Counter = Counter()
    for name, args in CONSTRUCTORS.items():
        for arg in args:
            for value in POOL:
                kw = {"output_dir": "out"} if name == "RedundancyClean" else {}
                kw[arg] = value
                try:
                    getattr(lc, name)(**kw)
                    counts["accepted"] += 1
                except (ValueError, TypeError) as err:
                    ok = name in str(err) and f"`{arg}" in str(err)
                    counts["clear" if ok else "unclear"] += 1
                    if not ok and os.environ.get("PROBE_VERBOSE"):
                        print(f"UNCLEAR {name}({arg}={value!r}): {type(err).__name__}: {err}"[:300])
                except Exception as err:  # noqa: BLE001
                    counts["other exception"] += 1
                    if os.environ.get("PROBE_VERBOSE"):
                        print(f"OTHER {name}({arg}={value!r}): {type(err).__name__}: {err}"[:300])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz", action="store_true")
    ap.add_argument("-v", action="store_true", help="print every probe's outcome")
    ap.add_argument("--only", default=None, help="run only probes whose owner contains this")
    opts = ap.parse_args()
    if opts.fuzz:
        counts = fuzz()
        total = sum(counts.values())
        print(f"fuzz: {total} constructions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return
    table: dict[str, Counter] = {}
    for owner, arg, kwargs, run in named_probes():
        if opts.only and opts.only not in owner:
            continue
        err, late = run()
        outcome = classify(err, owner, arg, late)
        table.setdefault(owner, Counter())[outcome] += 1
        if opts.v or outcome != "early":
            detail = "" if err is None else f"{type(err).__name__}: {str(err)[:160]}"
            print(f"{outcome:7s} {owner}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) {detail}".replace("\n", " "))
    cols = ("silent", "crash", "late", "early")
    print(f"\n| owner | {' | '.join(cols)} | total |\n|---|{'---|' * (len(cols) + 1)}")
    total: Counter = Counter()
    for owner, c in table.items():
        total.update(c)
        print(f"| {owner} | {' | '.join(str(c[k]) for k in cols)} | {sum(c.values())} |")
    print(f"| **all** | {' | '.join(str(total[k]) for k in cols)} | {sum(total.values())} |")


if __name__ == "__main__":
    main()
