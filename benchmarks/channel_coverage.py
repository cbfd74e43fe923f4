"""ChannelPruning over Torch-Pruning's 68 torchvision classification models, side by side with
Torch-Pruning (not CI).

For each model (random weights, BatchNorm statistics and affine randomised so that no BatchNorm is an
identity), at 50% channel sparsity:

* **ours**: ``ChannelPruning(sparsity=0.5, example_input=x)`` attached, one prune event (l1, local),
  the masked model in eval mode against ``clean`` of a copy: ``ok`` (slim output == masked output,
  rel <= 1e-5, and the slim parameter count equals the count the masks report), ``error`` (a clear
  ``ValueError`` at setup), ``wrong`` (the slim output differs, or the count does) or ``crash`` (the
  slim model fails to run); params after / before;
* **Torch-Pruning** (``pip install torch-pruning``; its ``MetaPruner`` with L1 magnitude importance,
  ``pruning_ratio=0.5``, the 1000-way classifier ignored, as its own torchvision test does; ViT:
  ``round_to=num_heads`` and ``hidden_dim`` updated after): ``ok`` when the pruned model runs and
  keeps its output shape; params after / before.

Each model runs in its own subprocess (``--one NAME --lib ours|tp``), one JSON line per result appended
to ``--out`` (default ``benchmarks/channel_coverage_results.jsonl``), so an interrupted run keeps what
it measured (``--resume`` skips models already there).  The giants (ViT-L/H, regnet_y_128gf: 0.3-0.6 B
parameters at 224 px) are listed as not run unless ``--all``.  Then it prints the table and the counts::

    nice -n 10 python benchmarks/channel_coverage.py            # all but the giants
    python benchmarks/channel_coverage.py --table               # print the table of what is there
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

MODELS = [
    "alexnet", "squeezenet1_0", "squeezenet1_1", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "googlenet",
    "inception_v3", "densenet121", "densenet169", "densenet201", "densenet161", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
    "regnet_y_32gf", "regnet_y_128gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf",
    "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn",
    "vgg16_bn", "vgg19_bn", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "vit_b_16",
    "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14",
]
#: parameters in millions (torchvision's model cards), for ``--by-size``
SIZE_M = {
    "squeezenet1_1": 1.2, "squeezenet1_0": 1.2, "mnasnet0_5": 2.2, "mobilenet_v3_small": 2.5, "mnasnet0_75": 3.2,
    "mobilenet_v2": 3.5, "regnet_y_400mf": 4.3, "mnasnet1_0": 4.4, "efficientnet_b0": 5.3, "regnet_x_400mf": 5.5,
    "mobilenet_v3_large": 5.5, "mnasnet1_3": 6.3, "regnet_y_800mf": 6.4, "googlenet": 6.6, "regnet_x_800mf": 7.3,
    "efficientnet_b1": 7.8, "densenet121": 8.0, "efficientnet_b2": 9.1, "regnet_x_1_6gf": 9.2,
    "regnet_y_1_6gf": 11.2, "resnet18": 11.7, "efficientnet_b3": 12.2, "densenet169": 14.1, "regnet_x_3_2gf": 15.3,
    "efficientnet_b4": 19.3, "regnet_y_3_2gf": 19.4, "densenet201": 20.0, "efficientnet_v2_s": 21.5,
    "resnet34": 21.8, "resnext50_32x4d": 25.0, "resnet50": 25.6, "inception_v3": 27.2, "convnext_tiny": 28.6,
    "densenet161": 28.7, "efficientnet_b5": 30.4, "regnet_y_8gf": 39.4, "regnet_x_8gf": 39.6, "efficientnet_b6": 43.0,
    "resnet101": 44.5, "convnext_small": 50.2, "efficientnet_v2_m": 54.1, "regnet_x_16gf": 54.3, "resnet152": 60.2,
    "alexnet": 61.1, "efficientnet_b7": 66.3, "wide_resnet50_2": 68.9, "regnet_y_16gf": 83.6, "vit_b_16": 86.6,
    "vit_b_32": 88.2, "convnext_base": 88.6, "resnext101_32x8d": 88.8, "regnet_x_32gf": 107.8,
    "efficientnet_v2_l": 118.5, "wide_resnet101_2": 126.9, "vgg11": 132.9, "vgg11_bn": 132.9, "vgg13": 133.0,
    "vgg13_bn": 133.1, "vgg16": 138.4, "vgg16_bn": 138.4, "vgg19": 143.7, "vgg19_bn": 143.7, "regnet_y_32gf": 145.0,
    "convnext_large": 197.8, "vit_l_32": 306.5, "vit_l_16": 304.3, "regnet_y_128gf": 644.8, "vit_h_14": 632.0,
}
GIANTS = {"vit_l_16", "vit_l_32", "vit_h_14", "regnet_y_128gf"}
TOL = 1e-5


def build(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = getattr(torchvision.models, name)(**kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    size = 224 if name.startswith("vit") else 96 if name == "inception_v3" else 64
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model.eval(), x


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def kept_params(model) -> int:
    """Parameters the channel masks keep (from the per-dim keep vectors on each module)."""
    total = 0
    for m in model.modules():
        dims_by_kind = m.__dict__.get("_lc_unit_dims", {})
        for pname, p in m._parameters.items():
            if p is None:
                continue
            n = p.numel()
            for kind, dims in dims_by_kind.items():
                for d in dims.get(pname, []):
                    vec = getattr(m, f"_lc_{kind}_d{d}")
                    n = n * int(vec.sum()) // vec.numel()
            total += n
    return total


def run_ours(name: str) -> dict:
    import torch

    from lightning_compress import ChannelPruning
    from lightning_compress.export import clean

    model, x = build(name)
    before = params(model)
    cb = ChannelPruning(sparsity=0.5, example_input=x)
    try:
        cb.attach(model)
    except ValueError as err:
        return {"status": "error", "why": str(err)[:300]}
    for g in cb.pruner.groups:
        cb.pruner.prune_group(g, 0.5)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    expected = kept_params(model)
    try:
        slim = clean(model)
        with torch.no_grad():
            out = slim(x)
    except Exception as err:  # noqa: BLE001 - reported as a crash
        return {"status": "crash", "why": f"{type(err).__name__}: {err}"[:300]}
    rel = float((out - masked).norm() / masked.norm().clamp_min(1e-30))
    after = params(slim)
    status = "ok" if rel <= TOL and after == expected else "wrong"
    return {"status": status, "ratio": after / before, "rel": rel, "count_ok": after == expected, "groups": len(cb.pruner.targets)}


def run_tp(name: str) -> dict:
    import torch
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    model, x = build(name)
    before = params(model)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    ignored += [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1000]
    kw = {}
    if isinstance(model, VisionTransformer):
        kw["round_to"] = model.encoder.layers[0].num_heads
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
            ignored_layers=ignored, **kw,
        )
        pruner.step()
        if isinstance(model, VisionTransformer):
            model.hidden_dim = model.conv_proj.out_channels
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - reported as an error
        return {"status": "error", "why": f"{type(err).__name__}: {err}"[:300]}
    if tuple(out.shape) != (1, 1000):
        return {"status": "wrong", "why": f"output shape {tuple(out.shape)}"}
    return {"status": "ok", "ratio": params(model) / before, "params_before": before}


def one(name: str, lib: str) -> dict:
    t = time.time()
    res = run_ours(name) if lib == "ours" else run_tp(name)
    return {"model": name, "lib": lib, **res, "seconds": round(time.time() - t, 1)}


def load(path: str) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    if os.path.exists(path):
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                out[(r["model"], r["lib"])] = r
    return out


def table(path: str) -> None:
    res = load(path)
    print("| model | ours | ours after/before | TP | TP after/before | ours / TP |")
    print("|---|---|---|---|---|---|")
    counts = {"ours": {}, "tp": {}}
    within = both = 0
    for name in MODELS:
        o, t = res.get((name, "ours")), res.get((name, "tp"))
        cells = []
        for r, lib in ((o, "ours"), (t, "tp")):
            st = r["status"] if r else ("not run (size)" if name in GIANTS else "not run")
            counts[lib][st] = counts[lib].get(st, 0) + 1
            cells += [st, f"{r['ratio']:.2f}" if r and "ratio" in r and r["status"] == "ok" else ""]
        ratio = ""
        if o and t and o["status"] == "ok" and t["status"] == "ok":
            both += 1
            q = o["ratio"] / t["ratio"]
            within += q <= 1.15
            ratio = f"{q:.2f}"
        print(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {ratio} |")
    print()
    print("ours:", ", ".join(f"{k} {v}" for k, v in sorted(counts["ours"].items())))
    print("Torch-Pruning:", ", ".join(f"{k} {v}" for k, v in sorted(counts["tp"].items())))
    print(f"both ok: {both}; ours within 1.15x of Torch-Pruning's params after/before: {within} of {both}")
    worst = [(r["model"], r.get("rel")) for r in res.values() if r["lib"] == "ours" and r.get("rel") is not None]
    if worst:
        m, r = max(worst, key=lambda a: a[1])
        print(f"largest slim-vs-masked rel among ours: {r:.1e} ({m})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one")
    ap.add_argument("--lib", choices=["ours", "tp"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "channel_coverage_results.jsonl"))
    ap.add_argument("--models", help="comma-separated subset")
    ap.add_argument("--all", action="store_true", help="also the giants")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800, help="per model and library, with --isolate")
    ap.add_argument("--isolate", action="store_true", help="each model and library in its own subprocess")
    ap.add_argument("--by-size", action="store_true", help="smallest models first (a partial run covers more)")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.lib)), flush=True)
        return
    if a.table:
        table(a.out)
        return
    names = a.models.split(",") if a.models else [n for n in MODELS if a.all or n not in GIANTS]
    if a.by_size:
        names.sort(key=lambda n: SIZE_M.get(n, 1e9))
    done = load(a.out) if a.resume else {}
    if not a.resume and os.path.exists(a.out):
        os.remove(a.out)
    for name in names:
        for lib in ("ours", "tp"):
            if (name, lib) in done:
                continue
            if not a.isolate:  # one process (imports once); an exception is that model's crash
                try:
                    rec = one(name, lib)
                except Exception as err:  # noqa: BLE001
                    rec = {"model": name, "lib": lib, "status": "crash", "why": f"{type(err).__name__}: {err}"[:300]}
                gc.collect()
            else:
                cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--lib", lib]
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                    rec = json.loads(line[-1]) if line else {"model": name, "lib": lib, "status": "crash", "why": p.stderr[-300:]}
                except subprocess.TimeoutExpired:
                    rec = {"model": name, "lib": lib, "status": "timeout"}
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    table(a.out)


if __name__ == "__main__":
    main()
