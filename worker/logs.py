"""Logging tweaks that keep expected outcomes out of the error log."""

from __future__ import annotations

import logging

#: Celery logs every failed chord header with a traceback. A final delivery failure is an
#: expected outcome, already in comms_log (tasks.receipts explains why FAILED bypasses the chord).
_CHORD_LOGGERS = ("celery.backends.base", "celery.backends.redis", "celery.app.builtins")


class _ExpectedChordFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Chord %r raised: %r":
            return "DeliveryFailed" not in repr(record.args)
        return True


def quiet_expected_failures() -> None:
    for name in _CHORD_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedChordFailure) for f in logger.filters):
            logger.addFilter(_ExpectedChordFailure())
