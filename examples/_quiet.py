"""Hide Lightning's advertising tips in the examples' output (nothing else).

Lightning 2.6 prints ``💡 Tip: For seamless cloud logging ... litlogger`` at every Trainer construction
and ``💡 Tip: For seamless cloud uploads ... litmodels`` with checkpointing: adverts for optional
packages, not information about the run.  :func:`hide_lightning_tips` drops exactly the records whose
message starts with ``💡 Tip:`` from Lightning's ``rank_zero`` logger; every other Lightning message
(devices, warnings, summaries) stays.  The examples call it; the library does not (a user's own
program decides what it prints).
"""

from __future__ import annotations

import logging

TIP_PREFIX = "💡 Tip:"
#: the loggers Lightning's rank_zero_info writes through
LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TIP_PREFIX)


def hide_lightning_tips() -> None:
    """Idempotent."""
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
