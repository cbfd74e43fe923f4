"""``LayerReductionKD``: a shallower student built from the model's own layers, trained with distillation."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._base import CompressionCallback
from lightning_compress.core import args, masking
from lightning_compress.core.distill import (
    DistillRecorder,
    check_teacher,
    copy_from_teacher,
    find_layer_stack,
    resolve_keep_layers,
    shrink_layers_,
    supports_attentions,
    teacher_mapping,
)

_OWNER = "LayerReductionKD"
_DEFAULT_WEIGHTS = {"logits": 1.0, "hidden": 0.0, "attention": 0.0, "labels": 1.0}


class LayerReductionKD(CompressionCallback):
    """Keep some layers of the model's layer stack and distil the full model into the reduced one.

    At ``setup(stage="fit")`` (before DeepSpeed wraps anything) the callback finds the layer stack of the
    network the LightningModule holds (a top-level submodule such as ``self.model``; ``layers`` is named
    relative to it), keeps a frozen deep copy of that network as teacher (or uses ``teacher``), and removes
    the other layers *in place*: student layer ``i`` is the very layer object ``keep_layers[i]``, so its
    weights are the teacher's.  A Hugging Face config gets ``num_hidden_layers`` (and ``layer_types``)
    updated and ``layer_idx`` attributes are renumbered, so the slim model saves and reloads.

    Distillation without touching the user's ``training_step`` (it only has to return its loss):

    * the student network's ``__class__`` is swapped (as in :mod:`lightning_compress.core.masking`; no
      forward hooks) for a subclass whose ``forward``, during a training step, also runs the teacher on the
      same arguments under ``torch.no_grad()`` and records both outputs; with ``weights["hidden"] > 0`` the
      mapped blocks are swapped likewise and record their outputs;
    * ``pl_module.training_step`` is overridden on the instance (what Lightning's own forward redirection
      does; it works under the plain Trainer, DDP and DeepSpeed, whose engine calls the LightningModule's
      ``training_step``): it calls the user's step and returns
      ``labels * user_loss + logits * KL + hidden * MSE + attention * MSE``, logging each term as
      ``kd/labels``, ``kd/logits``, ``kd/hidden``, ``kd/attention`` and the total as ``kd/loss``.

    The teacher is held by the callback (``self.teacher``), not registered on the LightningModule: it is not
    in ``pl_module.parameters()``, the optimizer or the DeepSpeed engine, so ZeRO never partitions it; every
    rank keeps it whole.  It is in eval mode with ``requires_grad=False`` and is moved to the student's
    device and floating dtype at ``on_fit_start``.  With every KD weight 0 the callback only reduces layers
    (and, with a given ``teacher``, applies ``copy_modules``); without a given teacher no copy is kept.

    Place it before pruning/quantization callbacks (so they see the reduced model).  If one of them already
    wrapped the model, its transforms are removed from the teacher copy (the teacher stays full precision).

    It reduces the model at ``setup`` of every stage: ``validate`` / ``test`` / ``predict`` (with
    ``ckpt_path``: a fresh full-depth model takes the checkpoint's reduced weights) run the reduced student,
    as after training; they distil nothing and keep no teacher copy, so a later ``fit`` of a model reduced
    by evaluation needs a given ``teacher`` when distilling (``ValueError`` otherwise).  A second ``fit`` on
    the same LightningModule keeps the reduction; a different LightningModule is reduced anew.  Checkpoint
    state (the kept layers) that arrives before ``setup`` decides which layers are kept; after ``setup`` it
    must agree (``ValueError`` naming both lists otherwise).  ``state_key`` is the class name (one instance
    per Trainer; a model is reduced once).

    Args:
        teacher: the teacher network; ``None`` = a frozen copy of the LightningModule's network before
            reduction.  It is called with the same arguments as the student network and used as is (frozen
            in place, not copied).  If its stack depth differs from the student's original depth, student
            layer ``i`` is mapped to teacher layer ``(i + 1) * n_teacher // n_student - 1``.
        keep_layers: indices (0-based, increasing) of the layers to keep, or an int = how many to keep,
            evenly spaced ending at the last layer (6 of 12 -> ``[1, 3, 5, 7, 9, 11]``).
        layers: qualified name of the layer stack (an ``nn.ModuleList``/``nn.Sequential``), relative to the
            LightningModule's network (``"bert.encoder.layer"``) or to the LightningModule
            (``"model.bert.encoder.layer"``).  ``None`` finds it: the ModuleList/Sequential of 2+ same-class
            blocks, preferring the length of a Hugging Face ``config.num_hidden_layers``, then the longest.
        copy_modules: with a given ``teacher``: names of modules (relative to the network) whose weights are
            loaded from the teacher into the student after reduction, e.g. ``["bert.embeddings",
            "classifier"]``; naming the layer stack copies teacher layer ``mapping[i]`` into student layer
            ``i``.  (Without a teacher the student already shares every weight with it.)
        temperature: softmax temperature of the logits KL (the term is scaled by ``temperature**2``).
        weights: factors of the summed terms; missing keys keep the defaults
            ``{"logits": 1.0, "hidden": 0.0, "attention": 0.0, "labels": 1.0}``. ``labels`` multiplies the
            loss the user's ``training_step`` returns; ``hidden`` = MSE between the outputs of student layer
            ``i`` and teacher layer ``mapping[i]``; ``attention`` = MSE between their attention
            probabilities (Hugging Face models with ``attn_implementation="eager"``).
        teacher_layers: the teacher layer of each kept student layer (student layer ``i`` <- teacher layer
            ``teacher_layers[i]``; DeepSpeed's ``teacher_layer``) instead of the default mapping.  With a
            given ``teacher`` and a student whose stack already has ``len(teacher_layers)`` layers (built
            shallow, as DeepSpeed's examples do), the student keeps all its layers.

    Raises:
        TypeError: in ``__init__`` for an argument of the wrong type (``keep_layers="3"``, ``temperature=True``,
            ``weights={"logits": "1"}``, ``teacher="bert"``).
        ValueError: in ``__init__`` for a bad ``keep_layers`` / ``weights`` / ``temperature`` /
            ``copy_modules``; in ``setup`` for ``keep_layers`` out of range or duplicated, no layer stack
            (pass ``layers``), a teacher whose hidden size or head count differs from the student's while the
            hidden/attention term is on, attention asked of a model that does not return it, manual
            optimization, or a checkpoint whose ``keep_layers`` differ.

    Example (``model``, ``datamodule``: yours; ``x``: a batch of its input)::

        import torch
        from lightning.pytorch import Trainer
        from lightning_compress import LayerReductionKD, RedundancyClean

        kd = LayerReductionKD(keep_layers=2, weights={"logits": 1.0, "hidden": 1.0, "labels": 1.0})
        Trainer(max_steps=1000, callbacks=[kd, RedundancyClean("slim")]).fit(model, datamodule)  # half the layers
        slim = torch.export.load("slim/model.pt2").module()  # runs without your model's code
        y = slim(x)  # exported in eval mode: call it as it is (it has no working .eval())
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        keep_layers: int | Sequence[int] = 6,
        layers: str | None = None,
        copy_modules: Sequence[str] | None = None,
        temperature: float = 2.0,
        weights: Mapping[str, float] | None = None,
        teacher_layers: Sequence[int] | None = None,
    ) -> None:
        if teacher is not None and not isinstance(teacher, nn.Module):
            args.fail(_OWNER, "teacher", teacher, f"is not an nn.Module", "pass the teacher network, or None for a frozen copy of the model", TypeError)
        if isinstance(keep_layers, (list, tuple)):
            keep = [args.check_int(i, f"keep_layers[{n}]", _OWNER, minimum=0, fix="use 0-based layer indices") for n, i in enumerate(keep_layers)]
            if not keep:
                args.fail(_OWNER, "keep_layers", keep_layers, "is empty", "list the 0-based indices of the layers to keep, or pass how many to keep")
            dup = sorted({i for i in keep if keep.count(i) > 1})
            if dup:
                args.fail(_OWNER, "keep_layers", keep_layers, f"lists layer(s) {dup} more than once", "keep each layer once")
        else:
            args.check_int(keep_layers, "keep_layers", _OWNER, minimum=1,
                           fix="pass how many layers to keep (>= 1) or a list of 0-based layer indices")
        args.check_str(layers, "layers", _OWNER, allow_none=True, what="the qualified name of the layer stack, e.g. 'bert.encoder.layer'")
        temperature = args.check_float(temperature, "temperature", _OWNER, minimum=0.0, min_closed=False)
        w = dict(_DEFAULT_WEIGHTS)
        for k, v in (args.check_mapping(weights, "weights", _OWNER, what=f"a dict with keys {sorted(_DEFAULT_WEIGHTS)}") or {}).items():
            if k not in _DEFAULT_WEIGHTS:
                args.fail(_OWNER, "weights", weights, f"has the unknown key {k!r}", f"use keys {sorted(_DEFAULT_WEIGHTS)}")
            w[k] = args.check_float(v, f"weights[{k!r}]", _OWNER, minimum=0.0)
        if copy_modules is not None:
            if teacher is None:
                raise ValueError(
                    f"{_OWNER}: `copy_modules` copies weights from a given `teacher`; with teacher=None the student "
                    f"already shares every kept weight with its teacher (a copy of the same model). Drop copy_modules "
                    f"or pass the teacher."
                )
            if isinstance(copy_modules, str) or not isinstance(copy_modules, (list, tuple)):
                args.fail(_OWNER, "copy_modules", copy_modules, "is not a list of module names", "pass e.g. ['bert.embeddings', 'classifier']", TypeError)
            for n, name in enumerate(copy_modules):
                args.check_str(name, f"copy_modules[{n}]", _OWNER, what="a module name")
        if teacher_layers is not None:
            if isinstance(teacher_layers, str) or not isinstance(teacher_layers, (list, tuple)):
                args.fail(_OWNER, "teacher_layers", teacher_layers, "is not a list of layer indices", "pass e.g. [1, 3, 5]", TypeError)
            tl = [args.check_int(i, f"teacher_layers[{n}]", _OWNER, minimum=0, fix="use 0-based layer indices") for n, i in enumerate(teacher_layers)]
            if not tl:
                args.fail(_OWNER, "teacher_layers", teacher_layers, "is empty", "list one teacher layer per kept layer, or pass None")
            if isinstance(keep_layers, int) and keep_layers != len(tl) or not isinstance(keep_layers, int) and len(list(keep_layers)) != len(tl):
                raise ValueError(f"{_OWNER}: `teacher_layers` {tl} needs one entry per kept layer (keep_layers={keep_layers!r}).")
        super().__init__()
        self.teacher_layers = list(teacher_layers) if teacher_layers is not None else None
        self.teacher = teacher
        self._given_teacher = teacher is not None
        self.keep_layers = keep_layers if isinstance(keep_layers, int) else list(keep_layers)
        self.layers = layers
        self.copy_modules = list(copy_modules) if copy_modules is not None else None
        self.temperature = float(temperature)
        self.weights = w
        # resolved at setup
        self.keep: list[int] | None = None
        self.mapping: list[int] | None = None
        self.stack_name: str | None = None  # relative to the LightningModule
        self.num_layers: int | None = None
        self._network: nn.Module | None = None
        self._recorder: DistillRecorder | None = None
        self._installed_step: Any = None  # the training_step put on the LightningModule instance
        self._net_stack = ""
        self._teacher_blocks: list[nn.Module] = []

    @property
    @override
    def state_key(self) -> str:
        return type(self).__qualname__

    def reset_state(self) -> None:
        """Forget the previous model's reduction (and its teacher copy, unless the teacher was given)."""
        if not self._given_teacher:
            self.teacher = None
        self.keep = self.mapping = self.stack_name = self.num_layers = None
        self._network, self._net_stack, self._teacher_blocks = None, "", []

    @property
    def distilling(self) -> bool:
        return any(self.weights[k] > 0 for k in ("logits", "hidden", "attention"))

    # ------------------------------------------------------------------------------------------ setup
    def _locate(self, pl_module: LightningModule) -> tuple[str, nn.Module, str, nn.Module]:
        """(network attribute, network, stack name in the network, stack container)."""
        children = list(pl_module.named_children())
        found: list[tuple[str, nn.Module, str, nn.Module]] = []
        if self.layers is not None:
            for attr, child in children:
                try:
                    found.append((attr, child, self.layers, child.get_submodule(self.layers)))
                except AttributeError:
                    pass
            head, _, rest = self.layers.partition(".")
            if not found and rest and isinstance(getattr(pl_module, head, None), nn.Module):
                try:
                    net = getattr(pl_module, head)
                    found.append((head, net, rest, net.get_submodule(rest)))
                except AttributeError:
                    pass
            if not found:
                if any(n == self.layers for n, _ in children):
                    raise ValueError(self._on_module_error(self.layers))
                cands = []
                for attr, child in children:
                    try:
                        cands.append(f"{attr}.{find_layer_stack(child)[0]}".rstrip("."))
                    except ValueError:
                        pass
                raise ValueError(
                    f"{_OWNER}: `layers`={self.layers!r} names no submodule of {type(pl_module).__name__}'s "
                    f"networks {[n for n, _ in children]}. Layer stacks found automatically: {cands or 'none'}; pass "
                    f"one of them (relative to the network, e.g. 'bert.encoder.layer') or layers=None."
                )
            if len(found) > 1:
                raise ValueError(
                    f"{_OWNER}: `layers`={self.layers!r} exists in several networks {[f[0] for f in found]}; name it "
                    f"relative to the LightningModule, e.g. '{found[0][0]}.{self.layers}'."
                )
            attr, net, name, container = found[0]
            find_layer_stack(net, name)  # type check with a clear message
            return attr, net, name, container
        errors = []
        for attr, child in children:
            try:
                name, container = find_layer_stack(child)
                found.append((attr, child, name, container))
            except ValueError as err:
                errors.append(str(err))
        if not found:
            raise ValueError(
                f"{_OWNER}: found no layer stack (an nn.ModuleList / nn.Sequential of 2 or more blocks of one class) "
                f"in the networks of {type(pl_module).__name__} ({[n for n, _ in children] or 'no submodules'}). "
                f"Pass `layers` = the qualified name of the container holding the layers, e.g. "
                f"layers='bert.encoder.layer' (Hugging Face BERT), 'model.layers' (Llama), 'transformer.h' (GPT-2)."
            )
        if len(found) > 1:
            raise ValueError(
                f"{_OWNER}: layer stacks in several networks: "
                f"{[f'{a}.{n}'.rstrip('.') for a, _, n, _ in found]}; pass `layers` = the one to reduce."
            )
        attr, net, name, container = found[0]
        if name == "" and isinstance(net, nn.ModuleList):
            raise ValueError(self._on_module_error(attr))
        return found[0]

    @staticmethod
    def _on_module_error(attr: str) -> str:
        return (
            f"{_OWNER}: the layer stack {attr!r} is an attribute of the LightningModule itself; distillation needs "
            f"the network the LightningModule calls: put the layers in one module (e.g. self.model = Net() holding "
            f"`{attr}`) and call it from training_step, then pass layers='model.{attr}' or layers=None."
        )

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":  # evaluation: the reduced student, no teacher, no distillation step
            self.attach(pl_module, trainer, stage)
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{_OWNER}: {type(pl_module).__name__} uses manual optimization; the callback adds the distillation "
                f"loss to the loss training_step returns, which manual optimization does not backpropagate. Use "
                f"automatic optimization, or call lightning_compress.core.distill.DistillRecorder yourself."
            )
        if self.attached_model is pl_module:  # a second fit(), or a fit after evaluation: already reduced
            if self.distilling and self.teacher is None:
                raise ValueError(
                    f"{_OWNER}: {type(pl_module).__name__} was reduced by validate/test/predict before this fit, so "
                    f"no copy of the full network exists to distil from. Pass `teacher=` (the full model), or fit "
                    f"before evaluating."
                )
            self._install(pl_module)
            return
        self.attach(pl_module, trainer, stage)

    def attach_model(self, trainer: Trainer | None, model: nn.Module, stage: str | None) -> None:
        """Reduce ``model``'s network in place, keep the teacher, install the distillation step."""
        pl_module = model
        assert isinstance(pl_module, LightningModule)
        attr, net, name, container = self._locate(pl_module)
        n = len(container)
        full_name = f"{attr}.{name}".rstrip(".")
        loaded = self._pending_state  # checkpoint state restored before setup decides the layers
        requested = self.keep_layers if loaded is None else loaded["keep_layers"]
        if loaded is not None and loaded.get("num_layers") not in (None, n):
            raise ValueError(
                f"{_OWNER}: the checkpoint was made from a {loaded['num_layers']}-layer {full_name!r}, this "
                f"model has {n}; load it into a model built like the original."
            )
        if self.teacher_layers is not None and self._given_teacher and loaded is None and n == len(self.teacher_layers):
            requested = list(range(n))  # the student is built shallow already: it keeps all its layers
        keep = resolve_keep_layers(requested, n, owner=_OWNER, stack=full_name)
        training = stage in ("fit", None)
        if self._given_teacher or (self.distilling and training):  # a given teacher also serves copy_modules
            if self.teacher is None:
                self.teacher = masking.strip(copy.deepcopy(net))
                t_name, t_stack = name, self.teacher.get_submodule(name) if name else self.teacher
            else:
                own = {id(p) for p in net.parameters()}
                if self.teacher is net or any(id(p) in own for p in self.teacher.parameters()):
                    raise ValueError(
                        f"{_OWNER}: `teacher` is (or shares weights with) the LightningModule's network {attr!r}, "
                        f"which is reduced in place. Pass teacher=None (a frozen copy is kept) or a separate model."
                    )
                try:
                    t_name, t_stack = find_layer_stack(self.teacher, name if _has(self.teacher, name) else None, owner=_OWNER)
                except ValueError as err:
                    raise ValueError(f"{str(err)} (in the `teacher`)") from None
            mapping = teacher_mapping(keep, n, len(t_stack), stack=t_name, owner=_OWNER)
            if self.teacher_layers is not None:
                if max(self.teacher_layers) >= len(t_stack):
                    raise ValueError(
                        f"{_OWNER}: `teacher_layers` {self.teacher_layers} names a layer beyond the teacher's "
                        f"{len(t_stack)} layers in {t_name!r}."
                    )
                mapping = list(self.teacher_layers)
            t_blocks = list(t_stack.children())
            if self._given_teacher:
                check_teacher(
                    net, self.teacher, [list(container.children())[i] for i in keep], [t_blocks[j] for j in mapping],
                    hidden=self.weights["hidden"] > 0, attention=self.weights["attention"] > 0, owner=_OWNER,
                )
            if self.weights["attention"] > 0:
                for who, m in (("student", net), ("teacher", self.teacher)):
                    if not supports_attentions(m):
                        raise ValueError(
                            f"{_OWNER}: weights['attention'] > 0 but the {who} ({type(m).__name__}) does not return "
                            f"attention maps: only Hugging Face models built with attn_implementation='eager' do "
                            f"(e.g. BertConfig(..., attn_implementation='eager')). Set weights['attention']=0 otherwise."
                        )
        else:
            mapping = list(keep)
        shrink_layers_(net, name, keep)
        self.keep, self.mapping, self.stack_name, self.num_layers = keep, list(mapping), full_name, n
        self._network, self._net_stack = net, name
        if self.teacher is not None:
            if self.copy_modules:
                copy_from_teacher(net, self.teacher, self.copy_modules, name, self.mapping, owner=_OWNER)
            self.teacher.eval()
            self.teacher.requires_grad_(False)
            self._teacher_blocks = [t_blocks[j] for j in mapping]
        if training:
            self._install(pl_module)

    def _install(self, pl_module: LightningModule) -> None:
        if not self.distilling:
            return
        net = self._network
        assert net is not None and self.teacher is not None
        name = self._net_stack
        hidden = self.weights["hidden"] > 0
        net_name = type(net).__name__
        s_blocks = list((net.get_submodule(name) if name else net).children()) if hidden else []
        self._recorder = DistillRecorder(
            net,
            self.teacher,
            s_blocks,
            self._teacher_blocks if hidden else [],
            attentions=self.weights["attention"] > 0,
            teacher_layers=self.mapping,
        )
        user_step = pl_module.training_step
        recorder, w, T = self._recorder, self.weights, self.temperature

        def training_step(*args: Any, **kwargs: Any) -> Any:
            with recorder.recording():
                out = user_step(*args, **kwargs)
            calls = recorder.pop_calls()
            if out is None:
                return None
            loss = out if isinstance(out, torch.Tensor) else out["loss"]
            if not calls:
                raise RuntimeError(
                    f"{_OWNER}: training_step did not call the network {net_name}'s forward, so there are "
                    f"no student outputs to distil. Call the network (self.<attr>(...)) in training_step."
                )
            terms = recorder.losses(calls, temperature=T, logits=w["logits"] > 0, hidden=w["hidden"] > 0)
            total = w["labels"] * loss
            for k, v in terms.items():
                total = total + w[k] * v.to(total.dtype)
                pl_module.log(f"kd/{k}", v.detach())
            pl_module.log("kd/labels", loss.detach())
            pl_module.log("kd/loss", total.detach())
            if isinstance(out, torch.Tensor):
                return total
            out = dict(out)
            out["loss"] = total
            return out

        self._installed_step = training_step
        pl_module.training_step = training_step  # type: ignore[method-assign]

    def _uninstall(self, pl_module: LightningModule) -> None:
        if self._installed_step is not None and pl_module.__dict__.get("training_step") is self._installed_step:
            del pl_module.training_step
        self._installed_step = None
        if self._recorder is not None:
            self._recorder.detach()
            self._recorder = None

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.teacher is None or not self.distilling:
            return
        dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)
        self.teacher.to(device=pl_module.device, dtype=dtype)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._uninstall(pl_module)

    def remove(self) -> None:
        """Stop distilling: restore the user's ``training_step`` and the network's class (the removed layers
        stay removed)."""
        model = self.attached_model
        if isinstance(model, LightningModule):
            self._uninstall(model)
        super().remove()

    # ------------------------------------------------------------------------------------------ state
    @override
    def own_state(self) -> dict[str, Any]:
        return {
            "keep_layers": list(self.keep) if self.keep is not None else self.keep_layers,
            "teacher_layers": self.mapping,
            "layers": self.stack_name,
            "num_layers": self.num_layers,
        }

    def apply_state(self, state: dict[str, Any]) -> None:
        """Check a checkpoint's kept layers against the reduction ``setup`` made (before ``setup``, the
        state is kept and decides the layers)."""
        if self.keep is not None and list(state["keep_layers"]) != self.keep:
            raise ValueError(
                f"{_OWNER}: the checkpoint kept layers {list(state['keep_layers'])} but this run kept "
                f"{self.keep}; pass keep_layers={list(state['keep_layers'])} to resume."
            )


def _has(module: nn.Module, name: str) -> bool:
    if not name:
        return False
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False
