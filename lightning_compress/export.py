"""Slim models: bake masks, remove pruned units, strip the masking machinery, save.

* :func:`clean` (``lightning_compress.clean``) -> a plain ``nn.Module`` of the user's own classes:
  every ``*mask`` transform (``"sparse_mask"`` of SparsePruning, ``"row_mask"``, ``"channel_mask"``,
  ``"head_mask"``, any other kind ending in ``mask``) is baked into the weights (zeros), pruned rows /
  channels / heads are removed physically with every shape attribute updated
  (:mod:`lightning_compress.core.surgery`), and all wrappers, ``_lc_*`` buffers and attributes go.
* :func:`save_slim`: ``torch.export`` program (``.pt2``: loads and runs with ``torch.export.load``
  in a process that does not have the model's class code), ``safetensors`` weights, optionally ONNX.

Quantized weights (``"weight_quant"`` transforms of WeightQuant / :func:`lightning_compress.quantize`):
:func:`clean` bakes their fake-quantized (dequantized float) values, so the plain model computes what
the quantized one did.  :func:`clean_for_storage` also returns them packed in low bits
(:func:`lightning_compress.core.quantize.pack_model`: int8, or 4/2/1-bit codes packed in uint8, with
scales), taken *after* pruned units are removed so the packed shapes are the slim ones, and a twin of
the slim model whose quantized Linear / Conv2d layers hold integer codes
(:class:`lightning_compress.export_onnx.StoredInt8`), which is what ``torch.export`` saves: the
files hold integers, not fp32.  Masks run before quantizers, and structured masks zero the
consumer's columns too, so per-tensor / per-channel scales do not change when units are removed;
group-wise scales of a consumer whose columns are removed are recomputed on the slim shape.

BatchNorm folding (``fold_batchnorm=True`` of :func:`clean` / :func:`clean_for_storage`, or
:func:`fold_batchnorm` on any model): every ``Conv2d -> BatchNorm2d`` pair whose BatchNorm reads only
that conv, and whose conv output nothing else reads, is folded into the conv's weight and bias
(running statistics, i.e. eval-mode semantics) and the BatchNorm becomes ``nn.Identity``.  Off by
default: the folded model computes the same outputs in ``eval()`` but is no longer the model you
trained (no BatchNorm in ``train()``, BatchNorm keys gone from the ``state_dict``, convs gain a bias),
which is right for deployment and wrong for further fine-tuning.  A slim model's narrow convs make the
per-channel BatchNorm a larger share of its run time than in the dense model, so folding matters more
after channel pruning.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from lightning_compress.core import masking
from lightning_compress.core.surgery import remove_units, strip, unit_groups

FORMATS = ("torch_export", "safetensors", "onnx")


def _is_mask_kind(kind: str) -> bool:
    return kind.endswith("mask")


@torch.no_grad()
def bake(model: nn.Module, kinds: str = "all") -> dict[str, list[str]]:
    """Write every transformed parameter's effective value into the parameter (in place).

    ``kinds="mask"``: only mask kinds; ``"all"``: masks and quantizers.  Returns
    ``{qualified module name: [kinds baked]}``.
    """
    baked: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not masking.is_wrapped(module):
            continue
        for pname, transforms in list(module._lc_param_transforms.items()):  # type: ignore[attr-defined]
            sel = tuple(t.kind for t in transforms if kinds == "all" or _is_mask_kind(t.kind))
            if not sel:
                continue
            value = masking.effective_param(module, pname, kinds=sel)
            module._parameters[pname].data.copy_(value.detach().to(module._parameters[pname].dtype))  # type: ignore[union-attr]
            baked.setdefault(name, []).extend(sel)
    return baked


def pack_quantized(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Packed low-bit storage of every weight quantized by a :class:`~lightning_compress.core.quantize.WeightFakeQuant`
    (WeightQuant, :func:`lightning_compress.quantize`): ``{f"{module}.{param}.{key}": tensor}`` as
    :func:`lightning_compress.core.quantize.pack_model` lays it out, or None when there is none.
    Other ``"weight_quant"`` transforms (hand-written functions) cannot be packed; :func:`clean`
    bakes their values as floats.  Must run before the quantizers are stripped.
    """
    from lightning_compress.core.quantize import pack_model

    packed = pack_model(model)
    return packed or None


def _drop_mask_transforms(model: nn.Module) -> None:
    for module in model.modules():
        if not masking.is_wrapped(module):
            continue
        for pname, transforms in list(module._lc_param_transforms.items()):  # type: ignore[attr-defined]
            transforms[:] = [t for t in transforms if not _is_mask_kind(t.kind)]
            if not transforms:
                del module._lc_param_transforms[pname]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- BatchNorm folding


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    w = conv.weight
    mean = bn.running_mean.detach().double()  # type: ignore[union-attr]
    var = bn.running_var.detach().double()  # type: ignore[union-attr]
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    new_w = (w.detach().double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
    new_b = ((b - mean) * scale + beta).to(w.dtype)
    conv.weight = nn.Parameter(new_w.contiguous(), requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(new_b.to(w.device), requires_grad=w.requires_grad)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, skip: Sequence[str] = ()) -> list[str]:
    """Fold every ``Conv2d -> BatchNorm2d`` pair into the conv (eval semantics), in place.

    A pair is folded when, in the ``torch.fx`` graph of ``model``, the BatchNorm2d's only input is
    the output of one Conv2d, that output has no other reader, each module is called exactly once,
    and the BatchNorm tracks running statistics.  The conv's weight is scaled per output channel by
    ``gamma / sqrt(running_var + eps)``, its bias becomes ``(bias - running_mean) * scale + beta``
    (computed in float64, stored in the conv's dtype), and the BatchNorm is replaced by
    ``nn.Identity``.  In ``eval()`` the model computes the same outputs; in ``train()`` it no longer
    normalises (fold only for inference).

    Args:
        model: any ``nn.Module`` (plain: call after :func:`clean`, not on a wrapped model).
        skip: qualified names of convs not to fold (e.g. weight-quantized convs, whose weights would
            leave the quantization grid).

    Returns:
        Notes (strings): what was folded (one summary line) and every BatchNorm left alone with the
        reason; a model fx cannot trace, or without such pairs, is left unchanged and says so.
    """
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many kinds of errors on dynamic code
        return [f"fold_batchnorm: torch.fx could not trace {type(model).__name__} ({type(err).__name__}); no BatchNorm folded."]
    modules = dict(model.named_modules())
    calls: dict[int, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = modules.get(str(node.target))
            if m is not None:
                calls[id(m)] = calls.get(id(m), 0) + 1
    notes: list[str] = []
    pairs: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.BatchNorm2d):
            continue
        bn_name = str(node.target)
        bn = modules[bn_name]
        src = node.args[0] if node.args else None
        conv = modules.get(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
        why = None
        if len(node.args) != 1 or node.kwargs or not isinstance(conv, nn.Conv2d):
            what = f"{src.op} {src.target}" if isinstance(src, fx.Node) else repr(src)
            why = f"its input is not a Conv2d output ({what})"
        elif len(src.users) != 1:
            others = sorted(u.name for u in src.users if u is not node)
            why = f"the output of Conv2d {str(src.target)!r} is also read by {others}"
        elif calls.get(id(conv), 0) != 1 or calls.get(id(bn), 0) != 1:
            why = f"Conv2d {str(src.target)!r} or the BatchNorm is called more than once"
        elif not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            why = "it has no running statistics (track_running_stats=False)"
        elif str(src.target) in skip:
            why = f"Conv2d {str(src.target)!r} is weight-quantized (folding would move its weights off the quantization grid)"
        if why is not None:
            notes.append(f"fold_batchnorm: {bn_name!r} not folded: {why}.")
            continue
        pairs.append((str(src.target), bn_name))
    for conv_name, bn_name in pairs:
        _fold_into_conv(modules[conv_name], modules[bn_name])  # type: ignore[arg-type]
        parent_name, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, nn.Identity())
    if pairs:
        notes.insert(0, f"fold_batchnorm: folded {len(pairs)} BatchNorm2d into the preceding Conv2d (eval semantics).")
    elif not notes:
        notes.append("fold_batchnorm: no Conv2d -> BatchNorm2d pair found; nothing folded.")
    return notes


def _weight_quantized(model: nn.Module) -> list[str]:
    return [
        name for name, m in model.named_modules()
        if masking.is_wrapped(m) and any(t.kind == "weight_quant" for ts in m._lc_param_transforms.values() for t in ts)  # type: ignore[attr-defined]
    ]


def clean(model: nn.Module, inplace: bool = True, fold_batchnorm: bool = False) -> nn.Module:
    """Bake masks (and fake-quant values), remove pruned rows/channels/heads, strip the machinery.

    Args:
        model: a model carrying lightning-compress transforms (or none: then only stripped).
        inplace: edit ``model`` itself (default) or a deep copy.
        fold_batchnorm: also fold ``Conv2d -> BatchNorm2d`` pairs into the convs (eval semantics;
            see :func:`lightning_compress.export.fold_batchnorm`).  Off by default: the result then
            keeps the trained model's structure and can be fine-tuned; turn it on for deployment.

    Returns:
        The plain model (the user's own classes; ``model.lc_clean_notes`` lists what could not be
        removed, e.g. heads of ``nn.MultiheadAttention``, and with ``fold_batchnorm`` what was
        folded and which BatchNorms were left alone, with the reason).
    """
    return clean_for_storage(model, inplace, fold_batchnorm=fold_batchnorm)[0]


def clean_for_storage(
    model: nn.Module, inplace: bool = True, fold_batchnorm: bool = False
) -> tuple[nn.Module, dict[str, torch.Tensor], nn.Module | None]:
    """:func:`clean`, plus what real low-bit storage needs.

    Returns ``(slim, packed, stored)``: the plain slim model; ``{f"{module}.{param}.{key}": tensor}``
    packed low-bit weights of the slim shapes (empty when nothing is quantized); and, when something
    is quantized, a twin of ``slim`` whose quantized layers hold integer codes (for ``torch.export``),
    else None.  With ``fold_batchnorm`` the same pairs are folded in ``slim`` and ``stored``
    (weight-quantized convs are not folded: their packed codes stay exact).
    """
    if not inplace:
        model = copy.deepcopy(model)
    quantized = _weight_quantized(model)
    bake(model, kinds="mask")
    groups = unit_groups(model)
    _drop_mask_transforms(model)  # their values are in the weights now
    notes = remove_units(model, groups)
    packed = pack_quantized(model) or {}
    stored = None
    if packed:
        from lightning_compress.export_onnx import int8_model

        stored, _ = int8_model(model, storage_only=True)
        strip(stored)
    bake(model, kinds="all")
    strip(model)
    if fold_batchnorm:
        notes += _fold(model, quantized)
        if stored is not None:
            _fold(stored, quantized)
    model.__dict__["lc_clean_notes"] = notes
    return model, packed, stored


_fold = fold_batchnorm  # the argument of clean() shadows the function's name there


# ---------------------------------------------------------------------------- saving


def _args_kwargs(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, tuple):
        return example, {}
    return (example,), {}


def state_for_safetensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared tensors stored once (tied embeddings) and contiguous CPU tensors."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple], str] = {}
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else (id(v), 0, ())
        if key in seen:
            continue
        seen[key] = k
        out[k] = v.detach().cpu().contiguous().clone()
    return out


def save_slim(
    model: nn.Module,
    output_dir: str | os.PathLike,
    example_input: Any = None,
    formats: Sequence[str] = ("torch_export", "safetensors"),
    packed: dict[str, torch.Tensor] | None = None,
    stored: nn.Module | None = None,
) -> dict[str, str]:
    """Save a clean model. Returns ``{format: path}``.

    With ``packed`` (from :func:`clean_for_storage`) the safetensors file holds the packed low-bit
    weights under ``lc_packed.<module>.<param>.<key>`` *instead of* their float values (read it back
    with :func:`load_slim_state`), and with ``stored`` the ``torch.export`` / ONNX files are made from
    that integer-storage twin.

    * ``"torch_export"``: ``model.pt2`` via ``torch.export.export`` + ``torch.export.save`` (needs
      ``example_input``: a tensor, a tuple of positional inputs, or a dict of keyword inputs).  Load
      with ``torch.export.load(path).module()(*inputs)``: no class code needed.
    * ``"safetensors"``: ``model.safetensors`` (weights + buffers; metadata has the class name).
    * ``"onnx"``: ``model.onnx`` (``torch.onnx.export(..., dynamo=False)``, opset 17).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"`formats` has unknown entries {unknown}; choose from {FORMATS}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    was_training = model.training
    model.eval()
    try:
        if "safetensors" in formats:
            from safetensors.torch import save_file

            state = state_for_safetensors(model)
            if packed:
                prefixes = {k.rsplit(".", 1)[0] for k in packed}
                state = {k: v for k, v in state.items() if k not in prefixes}
                state.update({f"lc_packed.{k}": v.contiguous() for k, v in packed.items()})
            p = out / "model.safetensors"
            save_file(state, str(p), metadata={"class": f"{type(model).__module__}.{type(model).__qualname__}"})
            paths["safetensors"] = str(p)
        if "torch_export" in formats or "onnx" in formats:
            if example_input is None:
                raise ValueError(
                    "save_slim: formats 'torch_export'/'onnx' need `example_input` (the first training batch's "
                    "input, or pass example_input=...)."
                )
            args, kwargs = _args_kwargs(example_input)
        runnable = stored if stored is not None else model
        runnable.eval()
        if "torch_export" in formats:
            ep = _export(runnable, args, kwargs)
            p = out / "model.pt2"
            torch.export.save(ep, str(p))
            paths["torch_export"] = str(p)
        if "onnx" in formats:
            p = out / "model.onnx"
            torch.onnx.export(runnable, args, str(p), kwargs=kwargs or None, dynamo=False, opset_version=17, do_constant_folding=stored is None)
            paths["onnx"] = str(p)
    finally:
        model.train(was_training)
    return paths


def _dynamic_batch(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {0: torch.export.Dim.AUTO} if value.dim() >= 1 else None
    if isinstance(value, dict):
        return {k: _dynamic_batch(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_dynamic_batch(v) for v in value)
    return None


def _export(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """``torch.export.export`` with a dynamic batch dimension (``Dim.AUTO``) where the model allows it."""
    dyn: Any = _dynamic_batch(kwargs) if kwargs and not args else _dynamic_batch(args)
    try:
        return torch.export.export(model, args, kwargs, dynamic_shapes=dyn)
    except Exception:  # a model that cannot have a symbolic batch: export the example's shapes
        return torch.export.export(model, args, kwargs)


def load_slim_state(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A float ``state_dict`` from a ``model.safetensors`` written by :func:`save_slim` (packed low-bit
    weights dequantized), for ``slim_model.load_state_dict``."""
    from safetensors.torch import load_file

    from lightning_compress.core.quantize import unpack_model

    raw = load_file(str(path))
    packed = {k[len("lc_packed.") :]: v for k, v in raw.items() if k.startswith("lc_packed.")}
    state = {k: v for k, v in raw.items() if not k.startswith("lc_packed.")}
    state.update(unpack_model(packed, dtype))
    return state


def write_json(obj: Any, path: str | os.PathLike) -> str:
    Path(path).write_text(json.dumps(obj, indent=2, default=str))
    return str(path)
