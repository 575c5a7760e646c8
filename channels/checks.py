"""Pure pre-dispatch checks for customer channels: phone numbers and quiet hours.

Phone numbers: https://github.com/google/libphonenumber (Python port `phonenumbers`), E.164 out.
Quiet hours (design.md §4): SMS 08:00-21:00 and push 08:00-22:00 in the customer's time zone,
unless the message is CRITICAL. The caller decides what to do with the answer (defer, send).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

#: Local wall-clock window for SMS: [start, end).
SMS_WINDOW = (time(8, 0), time(21, 0))
#: Local wall-clock window for push: [start, end).
PUSH_WINDOW = (time(8, 0), time(22, 0))


class InvalidPhoneNumber(ValueError):
    """The number cannot be parsed, or parses but is not a dialable number."""


@lru_cache(maxsize=8192)  # pure; a message checks its number up to three times
def normalize_phone(raw: str, default_region: str) -> str:
    """`raw` in E.164 (`+14155550123`); national numbers are read in `default_region` (ISO alpha-2).

    Raises InvalidPhoneNumber for garbage and for numbers no carrier could route (wrong length,
    unassigned ranges); such numbers would cost a Twilio 21211 and never deliver.
    """
    text = (raw or "").strip()
    if not text:
        raise InvalidPhoneNumber("no phone number")
    try:
        parsed = phonenumbers.parse(text, (default_region or "").upper() or None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"unparseable phone number: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber("not a valid phone number for its region")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def window_applies(priority: str) -> bool:
    """Quiet hours hold for every priority except CRITICAL, which is sent at any hour."""
    return priority.upper() != "CRITICAL"


def zone_for(tz_name: str | None) -> ZoneInfo:
    """The IANA zone, or UTC when the name is missing or unknown."""
    if not tz_name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def next_window_open(now_utc: datetime, tz_name: str | None, start: time, end: time
                     ) -> datetime | None:
    """None when `now_utc` is inside [start, end) of the customer's local day; otherwise the
    aware UTC datetime at which the window next opens.

    `tz_name` None or unknown: the window is read in UTC (we would rather send at a UTC-sensible
    hour than not at all). Wall-clock times are built in the local zone and converted, so the
    answer stays at 08:00 local across DST changes (e.g. 12:00 UTC, not 13:00, for New York on
    2026-03-08). A `start` inside a DST gap resolves with fold=0, i.e. just after the gap. A
    window with start > end (crossing midnight) is supported.
    """
    if now_utc.tzinfo is None:
        raise ValueError("now_utc must be timezone-aware")
    zone = zone_for(tz_name)
    local = now_utc.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    crosses_midnight = start > end
    inside = (wall >= start or wall < end) if crosses_midnight else start <= wall < end
    if inside:
        return None
    day: date = local.date()
    if wall >= start:
        day += timedelta(days=1)
    opening = datetime.combine(day, start, tzinfo=zone)
    return opening.astimezone(UTC)
