"""Known-harmless DeepSpeed noise, hidden only while a ``DeepSpeedCompressionStrategy`` is set up.

Each entry below names one message exactly (a regex anchored at its start), the reason it is harmless,
and where it comes from; nothing is ignored by category or by module.  :class:`QuietDeepSpeed` adds the
filters in the strategy's ``setup_environment`` and takes exactly those filters off again in its
``teardown``, so warnings outside a fit, and every other warning during one, stay as they were.
``LC_DEEPSPEED_WARNINGS=1`` keeps everything visible.

* ``FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated`` and the same for
  ``reduce_scatter_tensor``: DeepSpeed 0.19's ZeRO 1-3 partitioning calls these torch 2.14 names (they
  still work; torch will drop them, DeepSpeed must move).  Two lines each, repeated every time some
  library resets the warning registry: dozens of lines per ZeRO-3 run.
* DeepSpeed's log line ``You are using ZeRO with an untested optimizer, proceed with caution``: Lightning
  sets ``zero_allow_untested_optimizer=True`` by default, which is how every Lightning user runs a
  ``torch.optim`` optimizer under ZeRO; DeepSpeed still warns on every start.

Kept visible on purpose: DeepSpeed's ``Setting accelerator to CPU. If you have GPU or other accelerator,
we were unable to detect it`` (printed when DeepSpeed is imported, and true information for a user whose
GPU is not seen), and every warning not listed here.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

#: ``(category, message regex)`` of Python warnings hidden during a fit
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
    (FutureWarning, r"`torch\.distributed\.reduce_scatter_tensor` is deprecated"),
)
#: message regexes of DeepSpeed log records (logger ``"DeepSpeed"``) hidden during a fit
KNOWN_LOG_MESSAGES: tuple[str, ...] = (r"\*+ You are using ZeRO with an untested optimizer, proceed with caution",)
DEEPSPEED_LOGGER = "DeepSpeed"


class _DropKnown(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self._patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self._patterns)


class QuietDeepSpeed:
    """Adds the filters on :meth:`enter` and removes exactly them on :meth:`exit` (both idempotent)."""

    def __init__(self) -> None:
        self._filters: list[Any] = []
        self._log_filter: _DropKnown | None = None

    @property
    def active(self) -> bool:
        return self._log_filter is not None

    def enter(self) -> None:
        if self.active or os.environ.get("LC_DEEPSPEED_WARNINGS", "0") == "1":
            return
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
            self._filters.append(warnings.filters[0])
        self._log_filter = _DropKnown(KNOWN_LOG_MESSAGES)
        logging.getLogger(DEEPSPEED_LOGGER).addFilter(self._log_filter)

    def exit(self) -> None:
        if not self.active:
            return
        for entry in self._filters:
            if entry in warnings.filters:
                warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # what warnings.filterwarnings calls (3.10-3.13)
        if mutated is not None:
            mutated()
        self._filters = []
        logging.getLogger(DEEPSPEED_LOGGER).removeFilter(self._log_filter)
        self._log_filter = None
