"""The envelope's checks that run before the models: nesting depth and NUL characters. A request
that fails them is refused with a clear reason, never with an exception of another kind."""

from __future__ import annotations

from typing import Any

import pytest

from channels.envelope import MAX_NESTING, InvalidRequest, parse_request


def page(custom_details: Any) -> dict[str, Any]:
    return {"recipient": "ops@example.com", "channel": "pagerduty", "priority": "HIGH",
            "message_payload": {"summary": "core down", "custom_details": custom_details}}


def nested(levels: int) -> Any:
    """`levels` objects and arrays inside each other, alternating."""
    value: Any = "x"
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


# The request object is level 1, message_payload 2, custom_details' value starts at 3.
@pytest.mark.parametrize("levels", [MAX_NESTING - 2])
def test_accepted_when_nesting_is_at_the_limit(levels):
    assert parse_request(page(nested(levels)), max_bytes=10**6).channel == "pagerduty"


@pytest.mark.parametrize("levels", [MAX_NESTING - 1, 5_000, 200_000])
def test_refused_not_recursion_error_when_nested_too_deep(levels):
    with pytest.raises(InvalidRequest, match=f"request is nested deeper than {MAX_NESTING} levels"):
        parse_request(page(nested(levels)), max_bytes=10**8)


def test_every_nul_named_by_its_path_when_refused():
    request = page({"cells": ["ok", "b\x00d"], "k\x00": 1})
    request["signal_type"] = "out\x00age"

    with pytest.raises(InvalidRequest) as refused:
        parse_request(request, max_bytes=10**6)

    assert refused.value.problems == [
        "message_payload.custom_details.'k\\x00': U+0000 (NUL) is not allowed in text",
        "message_payload.custom_details.cells.1: U+0000 (NUL) is not allowed in text",
        "signal_type: U+0000 (NUL) is not allowed in text",
    ]


def test_written_backslash_u0000_is_text_not_a_nul():
    request = page({"note": "the JSON escape \\u0000 written out"})

    assert parse_request(request, max_bytes=10**6).channel == "pagerduty"
