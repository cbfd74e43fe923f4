"""DeepSpeed's ``compression_training`` config -> lightning-compress callbacks.

An existing DeepSpeed Compression user keeps the JSON and gets the equivalent callbacks::

    callbacks = from_deepspeed_config("ds_config.json")     # or the dict, or just the section
    Trainer(callbacks=callbacks, ...)

``DeepSpeedCompressionStrategy(config=...)`` does this itself when the config has the section.

Layout: :mod:`~lightning_compress.deepspeed.config` reads the file / dict and checks keys and values
(errors name the JSON path); :mod:`~lightning_compress.deepspeed.registry` holds ``TRANSLATORS``, one per
DeepSpeed method, each in its own file whose docstring is that method's translation table
(:mod:`~lightning_compress.deepspeed.sparse_pruning`, ``row_pruning``, ``head_pruning``,
``channel_pruning``, ``weight_quantization``, ``activation_quantization``, ``layer_reduction``);
:mod:`~lightning_compress.deepspeed.spec` builds the callbacks.  Adding a method = one new translator
file decorated with :func:`register_translator` (and its import below).

Shared by every method: ``enabled: false`` skips it (omitted ``enabled`` warns: DeepSpeed also skipped
it); ``different_groups.<g>.modules`` are ``modules`` regexes (``re.search``, as DeepSpeed; ``["*"]`` =
the callback's default targets); ``schedule_offset`` is ``start_step`` in optimizer steps, with
DeepSpeed's code defaults (1000 for pruning and activation quantization, 0 for weight quantization).
Keys that only steered DeepSpeed's kernels are accepted and warn when set to something we do not do;
settings that would change the result and that we do not implement, and every unknown key or method,
raise ``ValueError`` naming the key and its path in the config.
"""

# Translators register on import; this order is DeepSpeed's (and the order of the callbacks built).
from lightning_compress.deepspeed import layer_reduction  # noqa: F401
from lightning_compress.deepspeed import sparse_pruning  # noqa: F401
from lightning_compress.deepspeed import row_pruning  # noqa: F401
from lightning_compress.deepspeed import head_pruning  # noqa: F401
from lightning_compress.deepspeed import channel_pruning  # noqa: F401
from lightning_compress.deepspeed import weight_quantization  # noqa: F401
from lightning_compress.deepspeed import activation_quantization  # noqa: F401
from lightning_compress.deepspeed.config import SECTION
from lightning_compress.deepspeed.plan import from_deepspeed_config, plan_from_deepspeed_config
from lightning_compress.deepspeed.registry import TRANSLATORS, Translator, register_translator
from lightning_compress.deepspeed.spec import CallbackSpec, build_callback

__all__ = [
    "SECTION",
    "TRANSLATORS",
    "CallbackSpec",
    "Translator",
    "build_callback",
    "from_deepspeed_config",
    "plan_from_deepspeed_config",
    "register_translator",
]
