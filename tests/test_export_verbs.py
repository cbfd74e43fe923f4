"""The verbs of ``lightning_compress.export`` (its ``__init__`` docstring): what each takes, returns and changes."""

from __future__ import annotations

import onnxruntime as ort
import torch
from torch import nn

import lightning_compress
from lightning_compress import export
from lightning_compress.core import masking


def _masked_quantized_mlp() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    fc = model[0]
    fc.register_buffer("_lc_mask_test", (torch.rand(8, 6) > 0.5), persistent=False)
    masking.add_param_transform(fc, "weight", "M", masking.mask_transform("_lc_mask_test"), kind="sparse_mask",
                                priority=masking.MASK_PRIORITY)
    masking.add_param_transform(model[2], "weight", "Q", lambda m, w: torch.round(w * 8) / 8, kind="weight_quant",
                                priority=masking.QUANT_PRIORITY)
    return model, torch.randn(4, 6)


def test_public_names_in_both_places():
    for name in ("clean", "fold_batchnorm", "load_slim_state", "export_float", "export_int8", "export_qdq"):
        assert getattr(lightning_compress, name) is getattr(export, name)
    assert callable(export.clean)  # the function, not a submodule of the same name


def test_bake_walks_the_model_and_keeps_transforms():
    model, x = _masked_quantized_mlp()
    with torch.no_grad():
        expected = model(x)
        baked = masking.bake(model)
    assert baked == {"0.weight": ["sparse_mask"], "2.weight": ["weight_quant"]}
    assert masking.is_wrapped(model[0]) and masking.is_wrapped(model[2])
    assert masking.bake(model[0], kinds=("weight_quant",)) == {}
    masking.strip(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_strip_takes_everything_off_without_baking():
    model, x = _masked_quantized_mlp()
    w = model[0].weight.detach().clone()
    assert masking.strip(model) is model
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    assert not any(n.startswith("_lc_") for m in model.modules() for n in list(m._buffers) + list(m.__dict__))
    torch.testing.assert_close(model[0].weight, w)  # not baked


def test_plain_copy_leaves_the_model_alone():
    model, x = _masked_quantized_mlp()
    with torch.no_grad():
        expected = model(x)
        baked = export.plain_copy(model)
        float_copy = export.plain_copy(model, bake=False)
        assert masking.is_wrapped(model[0])
        torch.testing.assert_close(baked(x), expected)
        torch.testing.assert_close(float_copy[0].weight, model[0].weight)
    assert type(baked[0]) is nn.Linear and type(float_copy[2]) is nn.Linear


def test_clean_for_storage_returns_named_forms():
    model, x = _masked_quantized_mlp()
    forms = export.clean_for_storage(model, inplace=False)
    slim, packed, stored = forms
    assert isinstance(forms, export.StorageForms) and forms.slim is slim and packed == {} and stored is None
    assert masking.is_wrapped(model[0]) and type(slim[0]) is nn.Linear


def test_save_and_load_forms(tmp_path):
    model, x = _masked_quantized_mlp()
    with torch.no_grad():
        expected = model(x)
    slim = export.clean(model)
    paths = export.save_slim(slim, tmp_path, x, formats=export.FORMATS)
    with torch.no_grad():
        torch.testing.assert_close(export.load_program(paths["torch_export"])(x), expected)
        torch.testing.assert_close(export.load_program(paths["torch_export"])(x[:2]), expected[:2])  # dynamic batch
    state = export.load_slim_state(paths["safetensors"])
    assert set(state) == set(slim.state_dict())
    sess = ort.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=1e-5, rtol=1e-5)


def test_tensor_outputs_and_split_example():
    class TupleOut(nn.Module):
        def forward(self, a, b):
            return a + b, a - b

    a, b = torch.ones(2), torch.full((2,), 2.0)
    assert torch.equal(export.tensor_outputs(TupleOut())(a, b), a + b)
    assert export.split_example({"a": a}) == ((), {"a": a})
    assert export.split_example((a, b)) == ((a, b), {})
    args, kwargs = export.split_example(a)
    assert args[0] is a and kwargs == {}
