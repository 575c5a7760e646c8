"""Pre-dispatch checks: phone normalization and quiet hours across time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from channels.checks import (
    PUSH_WINDOW,
    SMS_WINDOW,
    InvalidPhoneNumber,
    next_window_open,
    normalize_phone,
    window_applies,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
        ) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# -- phone numbers -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        pytest.param("+14155552671", "US", "+14155552671", id="e164-kept"),
        pytest.param("(415) 555-2671", "US", "+14155552671", id="us-national"),
        pytest.param("415.555.2671", "us", "+14155552671", id="lowercase-region"),
        pytest.param("020 7946 0018", "GB", "+442079460018", id="gb-national"),
        pytest.param("+44 20 7946 0018", "US", "+442079460018", id="international-ignores-region"),
        pytest.param("090-1234-5678", "JP", "+819012345678", id="jp-mobile-national"),
        pytest.param("  +1 415 555 2671 ", "US", "+14155552671", id="whitespace"),
    ],
)
def test_normalize_phone_returns_e164_when_number_is_valid(raw, region, expected):
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("not a number", id="garbage"),
        pytest.param("12", id="too-short"),
        pytest.param("+1 415 555 267", id="one-digit-short"),
        pytest.param("+999 1234 5678", id="unknown-country-code"),
    ],
)
def test_normalize_phone_raises_when_number_is_invalid(raw):
    with pytest.raises(InvalidPhoneNumber):
        normalize_phone(raw, "US")


def test_invalid_phone_number_is_a_value_error_when_caught_generically():
    with pytest.raises(ValueError):
        normalize_phone("garbage", "US")


# -- quiet hours ---------------------------------------------------------------------------------

def test_window_applies_when_priority_is_not_critical():
    assert window_applies("HIGH") and window_applies("MEDIUM") and window_applies("LOW")
    assert not window_applies("CRITICAL")


def test_windows_match_design_when_read_as_constants():
    assert (time(8), time(21)) == SMS_WINDOW
    assert (time(8), time(22)) == PUSH_WINDOW


@pytest.mark.parametrize(
    ("now", "tz", "window", "expected"),
    [
        # Boundaries: [08:00, 21:00).
        pytest.param(utc(2026, 6, 10, 8, 0), "UTC", SMS_WINDOW, None, id="0800-exactly-inside"),
        pytest.param(utc(2026, 6, 10, 20, 59, 59), "UTC", SMS_WINDOW, None, id="2059-inside"),
        pytest.param(utc(2026, 6, 10, 21, 0), "UTC", SMS_WINDOW, utc(2026, 6, 11, 8),
                     id="2100-exactly-outside"),
        pytest.param(utc(2026, 6, 10, 7, 59), "UTC", SMS_WINDOW, utc(2026, 6, 10, 8),
                     id="0759-opens-same-day"),
        pytest.param(utc(2026, 6, 10, 21, 30), "UTC", PUSH_WINDOW, None, id="push-2130-inside"),
        pytest.param(utc(2026, 6, 10, 22, 0), "UTC", PUSH_WINDOW, utc(2026, 6, 11, 8),
                     id="push-2200-outside"),
        # Unknown or missing zone: read in UTC.
        pytest.param(utc(2026, 6, 10, 3, 0), None, SMS_WINDOW, utc(2026, 6, 10, 8), id="no-tz"),
        pytest.param(utc(2026, 6, 10, 3, 0), "Mars/Olympus_Mons", SMS_WINDOW,
                     utc(2026, 6, 10, 8), id="unknown-tz"),
        # East of UTC, local day ahead of UTC's: 22:30 UTC on the 10th is 07:30 on the 11th in
        # Tokyo (UTC+9); the window opens 08:00 JST on the 11th = 23:00 UTC on the 10th.
        pytest.param(utc(2026, 3, 10, 22, 30), "Asia/Tokyo", SMS_WINDOW, utc(2026, 3, 10, 23),
                     id="tokyo-early-local-morning"),
        # 13:00 UTC = 22:00 JST: closed until 08:00 JST the next local day = 23:00 UTC same day.
        pytest.param(utc(2026, 3, 10, 13, 0), "Asia/Tokyo", SMS_WINDOW, utc(2026, 3, 10, 23),
                     id="tokyo-late-local-evening"),
        pytest.param(utc(2026, 3, 10, 23, 0), "Asia/Tokyo", SMS_WINDOW, None,
                     id="tokyo-opening-instant"),
        # Auckland is UTC+13 in January (NZDT): 20:00 UTC on the 14th = 09:00 on the 15th.
        pytest.param(utc(2026, 1, 14, 20, 0), "Pacific/Auckland", SMS_WINDOW, None,
                     id="auckland-inside-next-local-day"),
        # 10:00 UTC on the 15th = 23:00 NZDT on the 15th: opens 08:00 on the 16th = 19:00 UTC.
        pytest.param(utc(2026, 1, 15, 10, 0), "Pacific/Auckland", SMS_WINDOW,
                     utc(2026, 1, 15, 19), id="auckland-night"),
        # West of UTC: 03:00 UTC = 20:00 PDT the previous day -> inside.
        pytest.param(utc(2026, 6, 10, 3, 0), "America/Los_Angeles", SMS_WINDOW, None,
                     id="los-angeles-previous-local-day"),
        # America/New_York springs forward 2026-03-08 02:00 EST -> 03:00 EDT.
        # 02:00 UTC on the 8th = 21:00 EST on the 7th: opens 08:00 EDT = 12:00 UTC (not 13:00).
        pytest.param(utc(2026, 3, 8, 2, 0), "America/New_York", SMS_WINDOW, utc(2026, 3, 8, 12),
                     id="new-york-spring-forward-overnight"),
        pytest.param(utc(2026, 3, 8, 6, 30), "America/New_York", SMS_WINDOW,
                     utc(2026, 3, 8, 12), id="new-york-spring-forward-in-gap"),
        pytest.param(utc(2026, 3, 8, 12, 0), "America/New_York", SMS_WINDOW, None,
                     id="new-york-spring-forward-opening"),
        # The day before, still EST: 08:00 EST = 13:00 UTC.
        pytest.param(utc(2026, 3, 7, 3, 0), "America/New_York", SMS_WINDOW, utc(2026, 3, 7, 13),
                     id="new-york-before-change"),
        # Falls back 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC); 08:00 EST = 13:00 UTC.
        # 05:30 UTC = 01:30 EDT, the first pass through the repeated hour.
        pytest.param(utc(2026, 11, 1, 5, 30), "America/New_York", SMS_WINDOW,
                     utc(2026, 11, 1, 13), id="new-york-fall-back-repeated-hour"),
        pytest.param(utc(2026, 11, 1, 12, 30), "America/New_York", SMS_WINDOW,
                     utc(2026, 11, 1, 13), id="new-york-fall-back-0730-local"),
        # 01:30 UTC on Nov 2 = 20:30 EST on Nov 1: inside until 21:00 EST = 02:00 UTC.
        pytest.param(utc(2026, 11, 2, 1, 30), "America/New_York", SMS_WINDOW, None,
                     id="new-york-after-fall-back-evening"),
        pytest.param(utc(2026, 11, 2, 2, 0), "America/New_York", SMS_WINDOW,
                     utc(2026, 11, 2, 13), id="new-york-after-fall-back-closing"),
        # Europe/London springs forward 2026-03-29 01:00 GMT -> 02:00 BST: 08:00 BST = 07:00 UTC.
        pytest.param(utc(2026, 3, 29, 0, 30), "Europe/London", SMS_WINDOW, utc(2026, 3, 29, 7),
                     id="london-spring-forward"),
        # Falls back 2026-10-25: 08:00 GMT = 08:00 UTC.
        pytest.param(utc(2026, 10, 25, 0, 30), "Europe/London", PUSH_WINDOW,
                     utc(2026, 10, 25, 8), id="london-fall-back"),
        # The 28th is still GMT: 21:30 UTC = 21:30 local, push window open until 22:00.
        pytest.param(utc(2026, 3, 28, 21, 30), "Europe/London", PUSH_WINDOW, None,
                     id="london-push-evening-gmt"),
    ],
)
def test_next_window_open_returns_utc_opening_when_outside_window(now, tz, window, expected):
    assert next_window_open(now, tz, *window) == expected


def test_next_window_open_returns_aware_utc_when_deferring():
    opening = next_window_open(utc(2026, 3, 10, 22, 30), "Asia/Tokyo", *SMS_WINDOW)
    assert opening is not None
    assert opening.tzinfo is UTC


def test_next_window_open_raises_when_now_is_naive():
    with pytest.raises(ValueError, match="aware"):
        next_window_open(datetime(2026, 1, 1, 12), "UTC", *SMS_WINDOW)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2026, 6, 10, 23, 0), None, id="late-inside"),
        pytest.param(utc(2026, 6, 10, 5, 0), None, id="early-inside"),
        pytest.param(utc(2026, 6, 10, 12, 0), utc(2026, 6, 10, 22), id="midday-closed"),
    ],
)
def test_next_window_open_handles_window_when_it_crosses_midnight(now, expected):
    assert next_window_open(now, "UTC", time(22), time(6)) == expected
