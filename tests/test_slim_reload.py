"""Every family of the matrix after HeadPruning + RowPruning (where they apply) and ``clean``, saved
with ``save_slim`` (``model.pt2``, ``model.safetensors``, ``architecture``) and reloaded in ONE fresh
process (shared by the tests of this file) that imports no test code:

* ``lightning_compress.load_slim(dir)`` rebuilds the slim model and computes exactly what it computed;
* ``model.pt2`` computes the same, also for another batch size and sequence length (``Dim.AUTO``);
* the Hugging Face families whose slim sizes a transformers config can express get an ``hf/``
  ``save_pretrained`` folder that ``from_pretrained`` loads to the same outputs; the others none, with
  the reason in the metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision")

from lightning_compress.callbacks import HeadPruning, RowPruning  # noqa: E402
from lightning_compress.export import clean, save_slim  # noqa: E402
from tests.test_families_hf import V, _build  # noqa: E402

HF = ["bert", "distilbert", "albert", "deberta_v2", "llama", "qwen2", "mistral", "vit", "t5_encoder", "gpt2"]
TORCH = ["torchvision_vit", "torchvision_swin", "transformer_encoder"]
#: families whose head+row slim model transformers can rebuild from its config (uniform layers, and a
#: head size that does not derive from hidden_size // num_heads)
HF_FOLDER = {"llama", "qwen2", "mistral", "vit", "t5_encoder"}


def _model(name: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    if name == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32)).eval()
        model.config._attn_implementation = "eager"
        return model, {"input_ids": torch.randint(0, V, (2, 7), generator=g)}
    if name in HF:
        return _build(name)
    if name == "torchvision_vit":
        from torchvision.models import VisionTransformer

        m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=4)
        nn.init.normal_(m.heads.head.weight, std=0.2)
        return m.eval(), (torch.randn(2, 3, 32, 32, generator=g),)
    if name == "torchvision_swin":
        from torchvision.models.swin_transformer import SwinTransformer

        m = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=4, stochastic_depth_prob=0.0)
        return m.eval(), (torch.randn(2, 3, 32, 32, generator=g),)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), (torch.randn(2, 5, 32, generator=g),)


def _other_shape(inputs):
    """Another batch size, and for token / sequence inputs another length."""
    def grow(x):
        x = torch.cat([x, x[:1]], 0)
        if x.dim() in (2, 3) and x.shape[1] > 1:  # (batch, seq) ids or (batch, seq, features)
            x = torch.cat([x, x[:, :3]], 1)
        return x

    return {k: grow(v) for k, v in inputs.items()} if isinstance(inputs, dict) else tuple(grow(v) for v in inputs)


def _tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for k in ("logits", "last_hidden_state"):
        v = out.get(k) if isinstance(out, dict) else getattr(out, k, None)
        if v is not None:
            return v
    return out[0]


def _call(model, inputs):
    with torch.no_grad():
        return _tensor(model(**inputs) if isinstance(inputs, dict) else model(*inputs))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


#: runs in the fresh process: no test code, only lightning_compress / transformers / torch
_SCRIPT = textwrap.dedent('''
    import json, sys, warnings
    import torch, transformers
    import lightning_compress
    from lightning_compress.export import load_program
    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    def tensor(out):
        if isinstance(out, torch.Tensor):
            return out
        for k in ("logits", "last_hidden_state"):
            v = out.get(k) if isinstance(out, dict) else getattr(out, k, None)
            if v is not None:
                return v
        return out[0]

    def call(m, inputs):
        with torch.no_grad():
            return tensor(m(**inputs) if isinstance(inputs, dict) else m(*inputs))

    cases = json.loads(sys.argv[1])
    results = {}
    for name, d in cases.items():
        inputs = torch.load(d + "/inputs.pt")
        r = {}
        slim = lightning_compress.load_slim(d)
        r["load_slim"] = [call(slim, x) for x in inputs]
        prog = load_program(d + "/model.pt2")
        r["pt2"] = [call(prog, x) for x in inputs]
        try:
            cfg = json.load(open(d + "/hf/config.json"))
        except FileNotFoundError:
            pass
        else:
            hf = getattr(transformers, cfg["architectures"][0]).from_pretrained(d + "/hf", attn_implementation="eager").eval()
            r["hf"] = [call(hf, x) for x in inputs]
        results[name] = r
    results["__test_code_imported__"] = sorted(m for m in sys.modules if m == "tests" or m.startswith("tests."))
    torch.save(results, sys.argv[2])
''')


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    warnings.filterwarnings("ignore", category=UserWarning)
    root = tmp_path_factory.mktemp("slim_reload")
    expected, dirs = {}, {}
    for name in HF + TORCH:
        model, inputs = _model(name)
        cbs = [HeadPruning(sparsity=0.5), RowPruning(sparsity=0.5)]
        for cb in cbs:
            cb.attach(model)
            for g in cb.pruner.groups:
                cb.prune_group(g, g.sparsity)
        with torch.no_grad():
            slim = clean(model).eval()
        d = root / name
        save_slim(slim, d, inputs, formats=("torch_export", "safetensors", "architecture"))
        both = [inputs, _other_shape(inputs)]
        torch.save(both, d / "inputs.pt")
        expected[name] = [_call(slim, x) for x in both]
        dirs[name] = str(d)
    out = root / "results.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p)}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(dirs), str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return expected, torch.load(out), dirs


@pytest.mark.parametrize("name", HF + TORCH)
def test_slim_model_reloads_in_a_fresh_process(reloaded, name):
    expected, results, dirs = reloaded
    assert results["__test_code_imported__"] == []
    got = results[name]
    for i, want in enumerate(expected[name]):
        assert torch.equal(got["load_slim"][i], want), f"{name}: load_slim(dir) input {i}"
        assert got["pt2"][i].shape == want.shape and _rel(got["pt2"][i], want) <= 1e-5, f"{name}: model.pt2 input {i}"
    from safetensors import safe_open

    with safe_open(os.path.join(dirs[name], "architecture.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["rebuildable"] == "true"
    if name in HF_FOLDER:
        assert meta["hf_pretrained"] == "hf"
        for i, want in enumerate(expected[name]):
            assert _rel(got["hf"][i], want) <= 1e-5, f"{name}: hf/ folder input {i}"
    else:
        assert "hf" not in got and not os.path.exists(os.path.join(dirs[name], "hf"))
        assert meta["hf_pretrained"].startswith("not written: ")


def test_model_that_cannot_be_written_down_says_why(tmp_path):
    """A class defined inside a function cannot be imported by the loader: the file records the
    reason, and load_slim(dir) raises it (model.pt2 still loads)."""
    import lightning_compress
    from lightning_compress.export import load_program

    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    model = Local().eval()
    x = torch.randn(3, 4)
    save_slim(model, tmp_path, (x,), formats=("torch_export", "safetensors", "architecture"))
    with pytest.raises(ValueError, match=r"could not be written down when it was saved: .*Local.*cannot be imported by name.*load_program"):
        lightning_compress.load_slim(tmp_path)
    assert torch.equal(load_program(tmp_path / "model.pt2")(x), model(x))


def test_load_slim_dir_keeps_shared_modules_and_tied_weights(tmp_path):
    """ALBERT's one shared layer stays one module; GPT-2's tied lm_head stays the embedding."""
    import lightning_compress

    for name in ("albert", "gpt2"):
        model, inputs = _build(name)
        save_slim(clean(model), tmp_path / name, inputs, formats=("safetensors", "architecture"))
        back = lightning_compress.load_slim(tmp_path / name)
        if name == "gpt2":
            assert back.lm_head.weight is back.transformer.wte.weight
        else:
            groups = back.encoder.albert_layer_groups
            assert len(list(back.modules())) == len(list(model.modules()))
            assert groups[0].albert_layers[0].config is back.config


def test_load_slim_dir_puts_activation_quantization_back(tmp_path):
    import lightning_compress
    from lightning_compress.callbacks import ActQuant, WeightQuant
    from lightning_compress.export import clean_for_storage

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    WeightQuant(bits=4).attach(model)
    ActQuant(bits=8, modules=[r"^2$"]).attach(model)
    model.eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = model(x)
    slim, packed, stored = clean_for_storage(model)
    save_slim(slim, tmp_path, (x,), formats=("safetensors", "architecture"), packed=packed, stored=stored)
    back = lightning_compress.load_slim(tmp_path)
    with torch.no_grad():
        assert torch.equal(back(x), slim(x)) and _rel(back(x), want) <= 1e-6
    assert back[2]._forward_pre_hooks  # the input quantizer is back
