"""Every flow test runs in each of the three shapes a message can take through the worker:
- first attempt inside comms.dispatch (the default: inline receipts, a free bulkhead slot),
- through the channel queue (inline receipts; COMMS_INLINE_SLOTS=0, as past the bulkhead),
- chord receipts (the design card's shape: the channel task, then the comms.receipt callback).
The receipts, vendor calls and fallbacks they assert must be the same in all three."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

SHAPES = {
    "first-attempt-in-dispatch": ("inline", 8),
    "channel-queue": ("inline", 0),
    "chord": ("chord", 8),
}


@pytest.fixture(autouse=True, params=list(SHAPES))
def delivery_shape(request: pytest.FixtureRequest) -> Iterator[str]:
    from config.settings import get_settings

    settings = get_settings()
    saved = settings.comms_receipt_mode, settings.comms_inline_slots
    settings.comms_receipt_mode, settings.comms_inline_slots = SHAPES[request.param]
    yield request.param
    settings.comms_receipt_mode, settings.comms_inline_slots = saved
