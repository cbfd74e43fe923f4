"""Modules whose ``forward`` reads a child's parameters directly (pure PyTorch).

Masks and quantizers act inside a module's own ``forward`` (:mod:`lightning_compress.core.masking`).
Some modules use a child's weights without calling the child's ``forward``:

* ``nn.MultiheadAttention`` passes ``out_proj.weight`` / ``out_proj.bias`` to
  ``F.multi_head_attention_forward`` (and, on its eval fast path, to ``torch._native_multi_head_attention``);
* ``nn.TransformerEncoderLayer``'s fast path (eval, or no autograd) hands ``self_attn.in_proj_weight``,
  ``self_attn.out_proj.weight``, ``linear1.weight``, ``linear2.weight``, the norms' weights ... to
  ``torch._transformer_encoder_layer_fwd``;
* torchvision's ``ShiftedWindowAttention`` (Swin) passes ``qkv.weight`` / ``proj.weight`` to
  ``shifted_window_attention``; torchvision ViT uses ``nn.MultiheadAttention``.

A transform on such a weight would be silently bypassed.  :func:`guard_direct_reads` finds every
such *reader* in a model and makes it substitute the effective values of its children's transformed
parameters for the duration of its own ``forward`` (:func:`set_readees`),
so training, eval (fast paths included) and ``clean`` all see the masked / quantized weights.

How readers are found: the methods of every class of a module (its MRO, ``nn.Module`` and
Lightning's bases excluded; not ``__init__``, ``reset_parameters``, ``_init_weights``, ``tie_*``,
``configure_*``, ``on_*`` and the like, which never run in a forward) are scanned for attribute chains
``self.<path>.<name>`` where ``<path>`` is a submodule and ``<name>`` one of its own parameters (not
followed by a metadata attribute: ``.dtype``, ``.device``, ``.shape`` ...).  A false positive costs
only an earlier substitution (the result is the same); a class whose source cannot be read (defined
in a REPL, built in C) is not scanned, and a read through a local alias (``w = self.fc.weight`` is
found; ``fc = self.fc; fc.weight`` is not) or from a module that is not an ancestor (tied weights)
is not seen.

An *input* transform (activation quantization) cannot be moved: it needs the child's ``forward`` to
run.  A child with input transforms whose reader never calls it (no ``self.<path>(`` in the reader's
source: ``nn.MultiheadAttention.out_proj``, Swin's ``qkv`` / ``proj``) is refused here with a
``ValueError``; for a reader that does call it (``nn.TransformerEncoderLayer``'s ``linear1``) the MHA
fast path is turned off during the reader's forward, and a forward that still skips the child raises.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap

from torch import nn

from lightning_compress.core import masking

_CHAIN = re.compile(r"\bself((?:\.[A-Za-z_]\w*)+)(\s*\()?")
_SKIP_MODULES = ("torch.nn.modules.module", "lightning.", "pytorch_lightning.")
#: methods that never run inside a forward (initialisation, bookkeeping, optimizer set-up)
_NOT_FORWARD = re.compile(
    r"^(__init__|extra_repr|_?reset_parameters|_init_weights|init_weights|_?tie_\w*|resize_\w*|get_\w*_embeddings|"
    r"set_\w*_embeddings|configure_\w*|on_\w*|state_dict|load_state_dict|_load_from_state_dict)$"
)
#: attributes of a tensor that are metadata: reading them needs no effective value
_METADATA = frozenset({"dtype", "device", "shape", "size", "ndim", "dim", "requires_grad", "is_cuda", "numel"})


def _method_sources(cls: type) -> list[str]:
    """The source of every method defined in ``cls``'s body, except :data:`_NOT_FORWARD` ones."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return []
    out = []
    for node in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _NOT_FORWARD.match(node.name):
            seg = ast.get_source_segment(src, node)
            if seg:
                out.append(seg)
    return out


@functools.lru_cache(maxsize=None)
def _class_chains(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """``(attribute chains read, chains called)`` in the methods of ``cls`` itself, without ``self.``."""
    read, called = set(), set()
    for src in _method_sources(cls):
        for m in _CHAIN.finditer(src):
            chain = m.group(1)[1:]
            (called if m.group(2) else read).add(chain)
    return frozenset(read), frozenset(called)


def _chains(module: nn.Module) -> tuple[set[str], set[str]]:
    read: set[str] = set()
    called: set[str] = set()
    for cls in masking.original_class(module).__mro__:
        if cls in (nn.Module, object) or cls.__module__.startswith(_SKIP_MODULES):
            continue
        r, c = _class_chains(cls)
        read |= r
        called |= c
    return read, called


def _submodule(module: nn.Module, path: list[str]) -> nn.Module | None:
    """The registered submodule at ``path`` (through ``_modules`` only: no property is evaluated)."""
    for part in path:
        module = module._modules.get(part)  # type: ignore[assignment]
        if module is None:
            return None
    return module


def direct_reads(module: nn.Module) -> dict[str, list[str]]:
    """``{child path: [its own parameter names]}`` that ``module``'s class source reads as
    ``self.<child path>.<name>`` (child path relative to ``module``, never empty)."""
    read, _ = _chains(module)
    found: dict[str, list[str]] = {}
    for chain in sorted(read):
        parts = chain.split(".")
        for k in range(1, len(parts)):
            path, name = ".".join(parts[:k]), parts[k]
            child = _submodule(module, parts[:k])
            if child is None:
                break
            if name in child._parameters:
                if k + 1 < len(parts) and parts[k + 1] in _METADATA:
                    break  # e.g. ``self.wo.weight.dtype``: no value is read
                if name not in found.setdefault(path, []):
                    found[path].append(name)
                break
    return found


def set_readees(reader: nn.Module, children: list[nn.Module]) -> None:
    """``reader``'s forward puts the effective values of ``children``'s transformed parameters in
    place for its call (the children then skip their own substitution: one run per transform per
    call), for a forward that reads a child's weights without calling it (``nn.MultiheadAttention``'s
    ``out_proj``, ``nn.TransformerEncoderLayer``'s fast path, torchvision Swin).  A read child with
    input transforms: the MHA fast path is off during the call, and ``RuntimeError`` if the child's
    forward still did not run (:class:`~lightning_compress.core.masking.CompressedModuleMixin`).
    Replaces the list; ``[]`` unwraps a reader with no transforms of its own.  A child that loses
    its last transform leaves its readers' lists (and unwraps a reader left with nothing)."""
    for child in reader.__dict__.get(masking.READEES, []):
        readers = child.__dict__.get(masking.READERS, [])
        readers[:] = [r for r in readers if r is not reader]
    if not children:
        reader.__dict__.pop(masking.READEES, None)
        masking.drop(reader, kinds=())  # unwraps it when it carries nothing of its own
        return
    masking.wrap(reader)
    reader.__dict__[masking.READEES] = list(children)
    for child in children:
        readers = child.__dict__.setdefault(masking.READERS, [])
        if not any(r is reader for r in readers):
            readers.append(reader)


def readees(reader: nn.Module) -> list[nn.Module]:
    """The children whose parameters ``reader``'s forward substitutes (see :func:`set_readees`)."""
    return list(reader.__dict__.get(masking.READEES, []))


def guard_direct_reads(model: nn.Module) -> dict[str, list[str]]:
    """Make every module of ``model`` that reads a transformed child parameter directly substitute the
    effective values in its own ``forward`` (idempotent; call again after adding or removing
    transforms: the compression drivers do so in ``attach``).  Returns ``{reader name: [child names]}``.

    Raises:
        ValueError: a child with input transforms (activation quantization) is read directly by a
            reader whose source never calls it, so the transform could never act.
    """
    guarded: dict[str, list[str]] = {}
    for name, reader in model.named_modules():
        reads = direct_reads(reader)
        children: list[nn.Module] = []
        child_names: list[str] = []
        called = _chains(reader)[1] if reads else set()
        for path in reads:
            child = _submodule(reader, path.split("."))
            assert child is not None
            if not masking.transformed_params(child) and not masking.input_transforms(child):
                continue
            full = f"{name}.{path}" if name else path
            if masking.input_transforms(child) and path not in called:
                owners = sorted({t.owner for t in masking.input_transforms(child)})
                raise ValueError(
                    f"module {full!r} has an input (activation) quantizer (from {', '.join(owners)}), but its parent "
                    f"{name or '<model>'!r} ({type(reader).__name__ if not masking.is_wrapped(reader) else masking.original_class(reader).__name__}) "
                    f"reads its weights directly and never calls its forward, so its input would never be "
                    f"quantized: exclude {full!r} (argument `exclude`)."
                )
            children.append(child)
            child_names.append(full)
        if children or readees(reader):
            set_readees(reader, children)
        if children:
            guarded[name] = child_names
    return guarded
