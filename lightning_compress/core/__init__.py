"""Pure-PyTorch core: everything the Lightning callbacks drive, usable from a plain PyTorch loop, the
Hugging Face Trainer or any other trainer.

Never imports lightning (nor deepspeed at module level), and this ``__init__`` imports nothing: import
the module you use.  The public objects, by module:

Drivers (one object per method, driven from your loop; the callbacks are thin adapters over them):

* :class:`lightning_compress.core.pruner.Pruner`: progressive pruning with any criterion / pattern /
  schedule (``update_scores()`` after backward, ``step(optimizer_steps_done)``, ``remove()``).
* :class:`lightning_compress.core.weight_quantizer.WeightQuantizer`: weight quantization-aware
  training (fake-quant in forward, straight-through backward, optional bit schedule).
* :class:`lightning_compress.core.act_quantizer.ActQuantizer`: activation fake-quantization (dynamic
  or static ranges).

Building blocks:

* :mod:`~lightning_compress.core.select`: which modules (``select_modules``: regex include / exclude
  over qualified names + module types).
* :mod:`~lightning_compress.core.schedule`: ``SparsitySchedule``, ``sparsity_at_event`` (over
  optimizer steps).
* :mod:`~lightning_compress.core.patterns`: ``parse_pattern`` and the pattern objects (``"NxM"``
  blocks, ``"N:M"``, unstructured) that turn scores into masks.
* :mod:`~lightning_compress.core.criteria`: pruning scores (``l1``, ``snip``, ``snip_momentum``,
  ``topk``).
* :mod:`~lightning_compress.core.quantize`: fake quantizers, ``bit_levels``,
  ``SUPPORTED_WEIGHT_BITS``, bit packing (``pack_state`` / ``unpack_state``).
* :mod:`~lightning_compress.core.masking`: how masks and quantizers ride on a module's forward
  (``param_transforms``, ``input_transforms``, ``find_transform``, ``drop``, ``bake``, ``strip``).
* :mod:`~lightning_compress.core.surgery`: physical removal of rows / channels / heads
  (``remove_units``, ``strip``).
* :mod:`~lightning_compress.core.graph`: which layers are coupled (tracing), for structured pruning.
* :mod:`~lightning_compress.core.distill`: layer reduction and distillation losses.
* :mod:`~lightning_compress.core.dist`: full parameters / gradients under ``torch.distributed`` and
  DeepSpeed ZeRO.

Saving and cleaning a compressed model is :mod:`lightning_compress.export` (also Lightning-free).
"""
