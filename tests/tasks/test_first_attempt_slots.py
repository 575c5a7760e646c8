"""The bulkhead that decides whether comms.dispatch makes a message's first attempt itself."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tasks.dispatch import first_attempt_slot


@pytest.fixture
def three_slots(delivery_shape: str) -> None:
    from config.settings import get_settings

    if delivery_shape != "first-attempt-in-dispatch":
        pytest.skip("the bulkhead is only used when the first attempt runs in comms.dispatch")
    get_settings().comms_inline_slots = 3


@pytest.mark.usefixtures("three_slots")
def test_the_fourth_concurrent_first_attempt_goes_to_the_channel_queue() -> None:
    with ExitStack() as held:
        got = [held.enter_context(first_attempt_slot("bulkhead-test")) for _ in range(4)]
        # Another channel has its own slots.
        with first_attempt_slot("bulkhead-other") as other:
            assert other is True
    assert got == [True, True, True, False]
    with first_attempt_slot("bulkhead-test") as again:  # released: free again
        assert again is True


def test_no_first_attempt_in_dispatch_with_chord_receipts_or_zero_slots(
        delivery_shape: str) -> None:
    with first_attempt_slot("bulkhead-shape") as inline:
        assert inline is (delivery_shape == "first-attempt-in-dispatch")
