"""The product's notion of now, for scheduling decisions (quiet hours, due times, drains).

`COMMS_CLOCK_OFFSET` (seconds, default 0) shifts it: tests and staging drills use it to stand at
03:00 or 08:00 in a customer's zone without waiting for the night. Never set it in production.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from config.settings import get_settings


def now() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=get_settings().comms_clock_offset)
