"""Post-training quantization (static / dynamic, ZeroQuant) and ONNX export (QDQ and int8 CPU form)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from lightning_compress.core import masking
from lightning_compress.core.quantize import pack_state, packed_nbytes, weight_quantizer
from lightning_compress.export import export_float, export_int8, export_qdq
from lightning_compress.export import plain_copy as _strip
from lightning_compress.ptq import quantize, zeroquant

NAMES = ["input_ids", "attention_mask"]


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def bert_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (4, 16), generator=g)
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[0, 12:] = 0
    calib = [{"input_ids": torch.randint(0, 100, (4, 16), generator=g), "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(3)]
    return ids, mask, calib


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


def _run_onnx(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_bert_ptq_qdq_export_agrees(bert, bert_inputs, tmp_path, mode):
    ids, mask, calib = bert_inputs
    qmodel = quantize(bert, calib if mode == "static" else None, weight_bits=8, act_bits=8)
    assert not masking.is_wrapped(bert.bert.encoder.layer[0].intermediate.dense)  # original untouched
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask).logits.numpy()
        fq = qmodel(input_ids=ids, attention_mask=mask).logits.numpy()
    assert _cos(fq, ref) >= 0.99
    path = export_qdq(qmodel, (ids, mask), tmp_path / "q.onnx", input_names=NAMES)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(path)
    out = _run_onnx(path, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert _cos(out, fq) >= 0.999
    assert np.abs(out - fq).max() < 1e-3


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_cnn_static_ptq_observers_qdq(cnn, tmp_path, observer):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 16, 16)
    calib = [(torch.randn(4, 3, 16, 16), torch.zeros(4)) for _ in range(3)]
    qmodel = quantize(cnn, calib, observer=observer)
    with torch.no_grad():
        ref, fq = cnn(x).numpy(), qmodel(x).numpy()
    assert _cos(fq, ref) >= 0.99
    path = export_qdq(qmodel, (x,), tmp_path / "cnn.onnx")
    assert "QuantizeLinear" in _ops(path)
    out = _run_onnx(path, {"input_0": x.numpy()})
    assert _cos(out, fq) >= 0.999


def test_cnn_dynamic_per_image_and_int8_conv_export(cnn, tmp_path):
    x = torch.randn(2, 3, 16, 16)
    qmodel = quantize(cnn)
    with torch.no_grad():
        ref, fq = cnn(x).numpy(), qmodel(x).numpy()
    assert _cos(fq, ref) >= 0.99
    out = _run_onnx(export_qdq(qmodel, (x,), tmp_path / "d.onnx"), {"input_0": x.numpy()})
    assert _cos(out, fq) >= 0.999
    summary = export_int8(qmodel, (x,), tmp_path / "i.onnx", conv="integer")
    assert summary["integer"] == ["features.0", "features.3"]
    stored = export_int8(qmodel, (x,), tmp_path / "s.onnx")
    assert stored["int8 storage"] == ["features.0", "features.3"]
    out = _run_onnx(tmp_path / "s.onnx", {"input_0": x.numpy()})
    with torch.no_grad():
        assert np.abs(out - quantize(cnn, act_bits=None)(x).numpy()).max() < 1e-4
    assert "ConvInteger" in _ops(tmp_path / "i.onnx")
    out = _run_onnx(tmp_path / "i.onnx", {"input_0": x.numpy()})
    assert _cos(out, ref) >= 0.99


def test_bert_int8_cpu_export(bert, bert_inputs, tmp_path):
    ids, mask, _ = bert_inputs
    qmodel = quantize(bert, None, weight_bits=8, act_bits=None)
    summary = export_int8(qmodel, (ids, mask), tmp_path / "i.onnx", input_names=NAMES)
    assert len(summary["integer"]) == 13 and summary["float"] == []  # 2 layers x 6 Linear + pooler; classifier excluded
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(tmp_path / "i.onnx")
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask).logits.numpy()
    assert _cos(_run_onnx(tmp_path / "i.onnx", feeds), ref) >= 0.999
    export_float(qmodel, (ids, mask), tmp_path / "f.onnx", input_names=NAMES)
    assert "MatMulInteger" not in _ops(tmp_path / "f.onnx")
    assert np.abs(_run_onnx(tmp_path / "f.onnx", feeds) - ref).max() < 1e-4


def test_zeroquant_mixed_int4_int8(bert, bert_inputs, tmp_path):
    ids, mask, _ = bert_inputs
    qmodel = zeroquant(bert, group_size=16, int4_modules=[r"intermediate\.dense", r"output\.dense$"])
    layer = qmodel.bert.encoder.layer[0]
    assert weight_quantizer(layer.intermediate.dense).bits == 4
    assert weight_quantizer(layer.attention.self.query).bits == 8
    assert weight_quantizer(layer.attention.self.query).spec.granularity == "group"
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask).logits.numpy()
        fq = qmodel(input_ids=ids, attention_mask=mask).logits.numpy()
    assert _cos(fq, ref) >= 0.98
    out = _run_onnx(export_qdq(qmodel, (ids, mask), tmp_path / "z.onnx", input_names=NAMES),
                    {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert _cos(out, fq) >= 0.999
    # group-wise weights have no MatMulInteger form: integer codes in the file, float kernels
    summary = export_int8(qmodel, (ids, mask), tmp_path / "zi.onnx", input_names=NAMES)
    assert summary["integer"] == [] and summary["float"] == [] and len(summary["int8 storage"]) == 13
    out = _run_onnx(tmp_path / "zi.onnx", {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():  # weights baked (W4/W8 group-wise), activation quantizers dropped
        expected = _strip(qmodel, bake=True)(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(out - expected).max() < 1e-4  # exactly the W4/W8 group-wise weights, float activations


def test_packed_files_by_bits_load_in_fresh_process(bert, tmp_path):
    from safetensors.torch import save_file

    sizes = {}
    for bits in (8, 4, 2, 1):
        qmodel = quantize(bert, None, weight_bits=bits, act_bits=None)
        tensors, fp32 = {}, 0
        expected = {}
        for name, module in qmodel.named_modules():
            if weight_quantizer(module) is not None:
                for key, t in pack_state(module).items():
                    tensors[f"{name}.weight.{key}"] = t
                fp32 += module.weight.numel() * 4
                expected[name] = masking.effective_param(module, "weight").detach()
        packed = sum(packed_nbytes({k: v}) for k, v in tensors.items())
        sizes[bits] = packed / fp32
        save_file(tensors, str(tmp_path / f"w{bits}.safetensors"))
        torch.save(expected, tmp_path / f"ref{bits}.pt")
    # integer payload is b/32 of fp32; the fp32 scale per row adds 4 bytes per 32 inputs here (hidden 32),
    # i.e. 1/32 of fp32, plus a few bytes of metadata
    for bits, ratio in sizes.items():
        assert bits / 32 < ratio < bits / 32 + 1 / 32 + 0.01, (bits, ratio)
    script = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import load_file
        from lightning_compress.core.quantize import unpack_state
        for bits in (8, 4, 2, 1):
            flat = load_file(r"{tmp_path}/w%d.safetensors" % bits)
            ref = torch.load(r"{tmp_path}/ref%d.pt" % bits)
            for name, w in ref.items():
                state = {{k.rsplit(".", 1)[1]: v for k, v in flat.items() if k.startswith(name + ".weight.")}}
                assert torch.equal(unpack_state(state), w), (bits, name)
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=".")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_quantize_bad_inputs(bert, cnn):
    with pytest.raises(ValueError, match="`calib_dataloader` yielded no batch"):
        quantize(cnn, [])
    with pytest.raises(ValueError, match=r"quantize: `weight_bits`=6 is not a supported bit width"):
        quantize(cnn, weight_bits=6)
    with pytest.raises(ValueError, match=r"quantize: `act_bits`=2 is not a supported bit width; use one of \[4, 8\]"):
        quantize(cnn, act_bits=2)
    with pytest.raises(ValueError, match=r"`group_size`=5 does not divide the input dimension 27 of module 'features.0'"):
        quantize(cnn, granularity="group", group_size=5)
    with pytest.raises(ValueError, match="`observer`='max' must be one of"):
        quantize(cnn, observer="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no Linear, Conv2d module of ReLU is left to compress"):
        quantize(nn.ReLU())
    with pytest.raises(ValueError, match="both None: nothing to quantize"):
        quantize(cnn, weight_bits=None, act_bits=None)
    with pytest.raises(ValueError, match=r"`int4_modules` regex 'nope' matches no quantized module"):
        zeroquant(bert, group_size=16, int4_modules=["nope"])
    with pytest.raises(ValueError, match="`weight_bits`=2 must be 8 or 4"):
        zeroquant(bert, weight_bits=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="export_int8: the model has no weight quantizer"):
        export_int8(cnn, (torch.randn(1, 3, 8, 8),), "unused.onnx")


@pytest.mark.parametrize("granularity,group", [("channel", None), ("group", 32)])
def test_int8_export_file_is_a_quarter(tmp_path, granularity, group):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    x = torch.randn(2, 128)
    q = quantize(mlp, None, weight_bits=8, act_bits=None, granularity=granularity, group_size=group, modules=[r"^[0-4]$"])
    export_float(mlp, (x,), tmp_path / "f.onnx")
    summary = export_int8(q, (x,), tmp_path / "i.onnx")
    assert len(summary["integer" if granularity == "channel" else "int8 storage"]) == 3
    ratio = (tmp_path / "i.onnx").stat().st_size / (tmp_path / "f.onnx").stat().st_size
    assert ratio < 0.35, ratio  # int8 codes + fp32 biases, scales and the fp32 classifier
    with torch.no_grad():
        ref = mlp(x).numpy()
    assert _cos(_run_onnx(tmp_path / "i.onnx", {"input_0": x.numpy()}), ref) >= 0.999
