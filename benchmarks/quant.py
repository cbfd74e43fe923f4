"""Quantization benchmark: ONNX Runtime CPU latency, file sizes by bit width, output agreement.

Models (random init; latency and size do not depend on the weights' values):
* BERT-small: ``BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
  intermediate_size=1024)``, batch 8 x 128 tokens;
* ResNet-18 (torchvision, 10 classes), batch 8 x 3 x 64 x 64.

Variants, all run through ONNX Runtime on the CPU, interleaved round-robin in one process (each
iteration runs every variant once, in a rotating order), median latency:
* ``fp32``: plain fp32 ONNX;
* ``ours int8``: :func:`lightning_compress.export.export_int8` of ``quantize(model, weight_bits=8,
  granularity="channel")`` (BERT: Linear layers, word embeddings and classifier, as ORT does; ResNet:
  every Conv / Linear but the last, convolutions kept as float Conv by default, also shown with
  ``ConvInteger``): our per-channel int8 weights, ORT's dynamic uint8 activations;
* ``ours int8 per-tensor``: the same with one weight scale per tensor (what quantize_dynamic does);
* ``ort quantize_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` of the fp32 ONNX (its
  defaults: int8 weights per tensor);
* ``ours QDQ``: :func:`export_qdq` of the static W8A8 PTQ model (calibrated on 4 random batches), the
  TensorRT / VNNI format.

Agreement: cosine of each variant's output with the fp32 PyTorch output on one batch.
Sizes: safetensors file of the whole model with every quantized layer stored by ``pack_state`` at
8 / 4 / 2 / 1 bits (the rest fp32), and of the quantized layers alone, relative to fp32.

Run: ``python benchmarks/quant.py [--iters 30] [--threads 1] [--models bert,resnet]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def build(name: str):
    if name == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, num_labels=2)
        model = BertForSequenceClassification(cfg).eval()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (8, 128), generator=g)
        mask = torch.ones(8, 128, dtype=torch.long)
        calib = [{"input_ids": torch.randint(0, cfg.vocab_size, (8, 128), generator=g), "attention_mask": mask} for _ in range(4)]
        return model, (ids, mask), ["input_ids", "attention_mask"], calib
    if name == "resnet":
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).eval()
        x = torch.randn(8, 3, 64, 64)
        calib = [(torch.randn(8, 3, 64, 64), None) for _ in range(4)]
        return model, (x,), None, calib
    raise ValueError(name)


def packed_sizes(model, tmp: str) -> dict[int, tuple[int, int, int]]:
    """bits -> (whole-model file bytes, quantized layers' packed bytes, those layers' fp32 bytes)."""
    from safetensors.torch import save_file

    from lightning_compress.core.quantize import pack_state, packed_nbytes, weight_quantizer
    from lightning_compress.ptq import quantize

    out = {}
    for bits in (8, 4, 2, 1):
        mods = [r"word_embeddings", r"encoder", r"pooler", r"classifier"] if hasattr(model, "bert") else None
        q = quantize(model, None, weight_bits=bits, act_bits=None, granularity="channel", modules=mods)
        tensors, qbytes, fbytes = {}, 0, 0
        quantized = set()
        for name, module in q.named_modules():
            if weight_quantizer(module) is not None:
                st = pack_state(module)
                qbytes += packed_nbytes(st)
                fbytes += module.weight.numel() * 4
                quantized.add(f"{name}.weight" if name else "weight")
                for k, v in st.items():
                    tensors[f"{name}.weight.{k}"] = v
        for k, v in model.state_dict().items():
            if k not in quantized:
                tensors[k] = v.detach().contiguous().clone()
        path = os.path.join(tmp, f"w{bits}.safetensors")
        save_file(tensors, path)
        out[bits] = (os.path.getsize(path), qbytes, fbytes)
    return out


def run(name: str, iters: int, threads: int) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic

    from lightning_compress.export import export_float, export_int8, export_qdq
    from lightning_compress.ptq import quantize

    from safetensors.torch import save_file

    model, args, names, calib = build(name)
    tmp = tempfile.mkdtemp(prefix=f"lcq_{name}_")
    with torch.no_grad():
        ref = (model(input_ids=args[0], attention_mask=args[1]).logits if names else model(*args)).numpy()
    feeds = {(names[i] if names else f"input_{i}"): a.numpy() for i, a in enumerate(args)}

    # like ORT's quantize_dynamic, also the word embeddings (BERT) and the classifier
    mods = [r"word_embeddings", r"encoder", r"pooler", r"classifier"] if names else None
    qw = quantize(model, None, weight_bits=8, act_bits=None, granularity="channel", modules=mods)
    qs = quantize(model, calib, weight_bits=8, act_bits=8, granularity="channel")
    paths = {
        "fp32": export_float(model, args, os.path.join(tmp, "fp32.onnx"), input_names=names),
        "ours int8": os.path.join(tmp, "int8.onnx"),
        "ort quantize_dynamic": os.path.join(tmp, "ortdyn.onnx"),
        "ours QDQ (W8A8 static)": export_qdq(qs, args, os.path.join(tmp, "qdq.onnx"), input_names=names),
    }
    summary = export_int8(qw, args, paths["ours int8"], input_names=names)
    paths["ours int8 per-tensor"] = os.path.join(tmp, "int8t.onnx")
    qt = quantize(model, None, weight_bits=8, act_bits=None, granularity="tensor", modules=mods)
    export_int8(qt, args, paths["ours int8 per-tensor"], input_names=names)
    if name == "resnet":
        paths["ours int8 (ConvInteger)"] = os.path.join(tmp, "int8conv.onnx")
        export_int8(qw, args, paths["ours int8 (ConvInteger)"], conv="integer")
    quantize_dynamic(paths["fp32"], paths["ort quantize_dynamic"])

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    for s in sessions.values():  # warm-up
        s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for i in range(iters):
        order = keys[i % len(keys):] + keys[: i % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32"])
    print(f"\n## {name}: batch {tuple(args[0].shape)}, ORT {ort.__version__}, {threads} thread(s), {iters} interleaved iterations")
    print(f"int8 export: {len(summary['integer'])} layers integer kernels, {len(summary['int8 storage'])} int8 storage + float kernel, {len(summary['float'])} float")
    print("| variant | median ms | speedup vs fp32 | cosine vs fp32 PyTorch | ONNX MB |")
    print("|---|---:|---:|---:|---:|")
    for k in keys:
        med = statistics.median(times[k])
        print(f"| {k} | {med * 1e3:.1f} | {base / med:.2f}x | {_cos(outs[k], ref):.5f} | {os.path.getsize(paths[k]) / 2**20:.2f} |")
    with torch.no_grad():
        fq = (qs(input_ids=args[0], attention_mask=args[1]).logits if names else qs(*args)).numpy()
    print(f"QDQ ONNX vs PyTorch fake-quant cosine: {_cos(outs['ours QDQ (W8A8 static)'], fq):.6f}")

    fp32_path = os.path.join(tmp, "fp32.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, fp32_path)
    fp32_size = os.path.getsize(fp32_path)
    print("| weight bits | model file MB | vs fp32 file | quantized layers vs their fp32 |")
    print("|---|---:|---:|---:|")
    print(f"| 32 | {fp32_size / 2**20:.2f} | 1.000 | 1.000 |")
    for bits, (fsize, qb, fb) in packed_sizes(model, tmp).items():
        print(f"| {bits} | {fsize / 2**20:.2f} | {fsize / fp32_size:.3f} | {qb / fb:.4f} (ideal {bits / 32:.4f}) |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="bert,resnet")
    a = p.parse_args()
    torch.set_num_threads(max(1, a.threads))
    for name in a.models.split(","):
        run(name, a.iters, a.threads)


if __name__ == "__main__":
    main()
