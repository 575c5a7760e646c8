"""Jira adapter: exact requests, ADF conversion and validity, classification, tenant-URL safety,
spec and sandbox round trips.

The ADF validity test uses Atlassian's published JSON Schema from the npm package
`@atlaskit/adf-schema` (`dist/json-schema/v1/full.json`). Point COMMS_ADF_SCHEMA at that file, or
install the package under the project root's node_modules; see ADF_SCHEMA_HINT.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from channels import get_channel
from channels.base import (
    ChannelConfigError,
    HttpRequest,
    HttpResponse,
    Notification,
    Permanent,
    Retryable,
    Sent,
    deliver,
)
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from channels.jira import JiraChannel, to_adf
from config.settings import Settings
from tests.adf import BREAK, assert_adf_structure, require_adf_validator
from tests.channels.hostile import HOSTILE_LABELS
from tests.specs import validate_http_request, validate_recorded
from worker.sandbox import Reply, Sandbox


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jira_domain": "acme",
        "jira_email": "bot@acme.example",
        "jira_api_token": "jira-token",
        "jira_base_url": None,
    }
    values.update(overrides)
    return Settings(**values)


def notification(payload: dict[str, Any] | None = None, **fields: Any) -> Notification:
    data: dict[str, Any] = {
        "recipient": "jane@example.com",
        "channel": "jira",
        "priority": "HIGH",
        "message_id": "6f1d3c2e-8a7b-4c5d-9e0f-112233445566",
        "message_payload": payload
        or {
            "project_key": "OPS",
            "issue_type": "Incident",
            "summary": "Tower 12 down",
            "description": "Line one",
            "labels": ["outage", "tower-12"],
        },
    }
    data.update(fields)
    return Notification(DispatchRequest.model_validate(data))


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


# -- building ------------------------------------------------------------------------------------


def test_issue_request_matches_seed_when_payload_is_complete():
    req = JiraChannel(settings()).build_request(notification())
    auth = base64.b64encode(b"bot@acme.example:jira-token").decode()
    assert req.method == "POST"
    assert req.url == "https://acme.atlassian.net/rest/api/3/issue"
    assert req.headers == {
        "Authorization": f"Basic {auth}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    assert req.json == {
        "fields": {
            "project": {"key": "OPS"},
            "issuetype": {"name": "Incident"},
            "summary": "Tower 12 down",
            "description": {
                "type": "doc",
                "version": 1,
                "content": [{"type": "paragraph", "content": [text("Line one")]}],
            },
            "priority": {"name": "High"},
            "labels": ["outage", "tower-12"],
        }
    }


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("CRITICAL", "Highest"), ("HIGH", "High"), ("MEDIUM", "Medium"), ("LOW", "Low")],
    ids=["critical", "high", "medium", "low"],
)
def test_priority_is_mapped_when_building_issue(priority, expected):
    req = JiraChannel(settings()).build_request(notification(priority=priority))
    assert req.json["fields"]["priority"] == {"name": expected}


def test_base_url_override_is_used_when_jira_base_url_is_set():
    channel = JiraChannel(settings(jira_base_url="http://127.0.0.1:9/jira", jira_domain=None))
    assert channel.build_request(notification()).url == "http://127.0.0.1:9/jira/rest/api/3/issue"


@pytest.mark.parametrize("domain", list(HOSTILE_LABELS.values()), ids=list(HOSTILE_LABELS))
def test_config_error_is_raised_when_domain_is_not_a_hostname_label(domain):
    with pytest.raises(ChannelConfigError, match="JIRA_DOMAIN"):
        JiraChannel(settings(jira_domain=domain)).build_request(notification())


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("jira_email", "JIRA_EMAIL"),
        ("jira_api_token", "JIRA_API_TOKEN"),
        ("jira_domain", "JIRA_DOMAIN"),
    ],
    ids=["email", "token", "domain"],
)
def test_config_error_names_variable_when_credential_is_missing(field, variable):
    with pytest.raises(ChannelConfigError, match=variable):
        JiraChannel(settings(**{field: None})).build_request(notification())


def test_registry_builds_jira_when_asked_by_name():
    assert isinstance(get_channel("jira", settings()), JiraChannel)


# -- ADF -----------------------------------------------------------------------------------------

ADF_CASES = [
    ("one-line", "Tower down", [[text("Tower down")]]),
    ("paragraphs", "First para.\n\nSecond para.", [[text("First para.")], [text("Second para.")]]),
    ("line-breaks", "a\nb\nc", [[text("a"), BREAK, text("b"), BREAK, text("c")]]),
    (
        "mixed",
        "Intro\nmore\n\n\n\nNext\nline",
        [[text("Intro"), BREAK, text("more")], [text("Next"), BREAK, text("line")]],
    ),
    ("blank-line-with-spaces", "a\n  \t\nb", [[text("a")], [text("b")]]),
    ("crlf", "a\r\nb\r\n\r\nc", [[text("a"), BREAK, text("b")], [text("c")]]),
    ("outer-newlines", "\n\nbody\n\n", [[text("body")]]),
    (
        "verbatim-specials",
        "<b>&amp; \"quoted\" 'single'</b> {x} \\n *not md*",
        [[text("<b>&amp; \"quoted\" 'single'</b> {x} \\n *not md*")]],
    ),
    ("unicode", "Ünïcödé 🚀 中文 — ok", [[text("Ünïcödé 🚀 中文 — ok")]]),
    (
        "inner-spaces-kept",
        "  indented\n\ttabbed  ",
        [[text("  indented"), BREAK, text("\ttabbed  ")]],
    ),
]


@pytest.mark.parametrize(
    ("source", "paragraphs"), [c[1:] for c in ADF_CASES], ids=[c[0] for c in ADF_CASES]
)
def test_adf_has_expected_paragraphs_when_text_is_converted(source, paragraphs):
    assert to_adf(source) == {
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": inline} for inline in paragraphs],
    }


def test_adf_keeps_every_character_when_text_has_no_paragraph_breaks():
    source = "x" * 5000 + "\n" + "y" * 5000
    inline = to_adf(source)["content"][0]["content"]
    assert "".join(node.get("text", "\n") for node in inline) == source


@pytest.mark.parametrize(("source",), [(c[1],) for c in ADF_CASES], ids=[c[0] for c in ADF_CASES])
def test_adf_is_structurally_valid_when_text_is_converted(source):
    assert_adf_structure(to_adf(source))


@pytest.mark.parametrize(("source",), [(c[1],) for c in ADF_CASES], ids=[c[0] for c in ADF_CASES])
def test_adf_conforms_to_atlaskit_schema_when_text_is_converted(source):
    require_adf_validator().validate(to_adf(source))


def test_atlaskit_schema_rejects_empty_text_node_when_checked():
    validator = require_adf_validator()
    bad = {
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}],
    }
    assert not validator.is_valid(bad)


# -- classifying ---------------------------------------------------------------------------------

FIELD_ERRORS = {
    "errorMessages": [],
    "errors": {
        "priority": "Specify a valid priority",
        "customfield_10010": "Field 'customfield_10010' cannot be set. It is not"
        " on the appropriate screen, or unknown.",
    },
}

CLASSIFY = [
    (
        "created",
        response(
            201,
            {
                "id": "10000",
                "key": "ED-24",
                "self": "https://acme.atlassian.net/rest/api/3/issue/10000",
            },
        ),
        Sent("ED-24"),
    ),
    (
        "field-errors",
        response(400, FIELD_ERRORS),
        Permanent(
            "jira:http_400 priority: Specify a valid priority; customfield_10010: Field"
            " 'customfield_10010' cannot be set. It is not on the appropriate screen, or"
            " unknown."
        ),
    ),
    (
        "error-messages",
        response(400, {"errorMessages": ["Issue type is invalid"], "errors": {}}),
        Permanent("jira:http_400 Issue type is invalid"),
    ),
    ("bad-request-no-body", response(400), Permanent("jira:http_400")),
    (
        "unprocessable",
        response(422, {"errorMessages": ["Config problem"], "errors": {}}),
        Permanent("jira:http_422 Config problem"),
    ),
    (
        "rate-limited",
        response(429, None, {"Retry-After": "5", "RateLimit-Reason": "jira-burst-based"}),
        Retryable("jira:http_429", 5.0),
    ),
    ("rate-limited-no-hint", response(429), Retryable("jira:http_429", None)),
    ("unavailable", response(503, None, {"Retry-After": "30"}), Retryable("jira:http_503", 30.0)),
    (
        "server-error",
        response(500, {"errorMessages": ["Internal server error"]}),
        Retryable("jira:http_500", None),
    ),
    ("unauthenticated", response(401), Permanent("jira:auth_http_401")),
    ("forbidden", response(403), Permanent("jira:auth_http_403")),
    ("not-found", response(404), Permanent("jira:http_404")),
]


@pytest.mark.parametrize(
    ("resp", "expected"), [c[1:] for c in CLASSIFY], ids=[c[0] for c in CLASSIFY]
)
def test_outcome_matches_table_when_jira_answers(resp, expected):
    assert JiraChannel(settings()).classify(resp) == expected


def test_retry_after_http_date_is_honoured_when_rate_limited():
    when = datetime.now(UTC) + timedelta(seconds=90)
    outcome = JiraChannel(settings()).classify(
        response(429, None, {"Retry-After": format_datetime(when, usegmt=True)})
    )
    assert isinstance(outcome, Retryable) and outcome.retry_after is not None
    assert 70 <= outcome.retry_after <= 90


def test_rate_limit_reset_is_used_when_retry_after_is_absent():
    reset = (datetime.now(UTC) + timedelta(seconds=60)).isoformat(timespec="milliseconds")
    outcome = JiraChannel(settings()).classify(
        response(429, None, {"X-RateLimit-Reset": reset.replace("+00:00", "Z")})
    )
    assert isinstance(outcome, Retryable) and outcome.retry_after is not None
    assert 40 <= outcome.retry_after <= 60


# -- vendor spec and sandbox ---------------------------------------------------------------------


def test_issue_request_conforms_to_spec_when_validated():
    validate_http_request("jira", JiraChannel(settings()).build_request(notification()))


def sandbox_settings(sb: Sandbox) -> Settings:
    return Settings.model_validate({k.lower(): v for k, v in sb.env().items()})


def test_issue_is_created_and_request_conforms_to_spec_when_sent_to_sandbox():
    n = notification(
        {
            "project_key": "OPS",
            "issue_type": "Task",
            "summary": "S",
            "description": "Para <1>\nbreak\n\nPara & 2",
        }
    )
    with Sandbox() as sb:
        channel = JiraChannel(sandbox_settings(sb))
        first = deliver(channel, n, HttpTransport())
        second = deliver(channel, n, HttpTransport())
        recorded = sb.requests("jira")
    assert (first, second) == (Sent("OPS-1"), Sent("OPS-2"))
    assert recorded[0].path == "/jira/rest/api/3/issue"
    assert recorded[0].json()["fields"]["description"] == to_adf("Para <1>\nbreak\n\nPara & 2")
    for r in recorded:
        validate_recorded(r)


def test_sandbox_answers_401_when_credentials_are_missing():
    with Sandbox() as sb:
        req = JiraChannel(sandbox_settings(sb)).build_request(notification())
        unauthenticated = HttpRequest(
            req.method, req.url, headers={"Content-Type": "application/json"}, json=req.json
        )
        reply = HttpTransport().send(unauthenticated)
    assert isinstance(reply, HttpResponse) and reply.status == 401
    assert JiraChannel(settings()).classify(reply) == Permanent("jira:auth_http_401")


def test_scripted_field_errors_are_permanent_when_sandbox_plays_them():
    with Sandbox() as sb:
        sb.script("jira", Reply(400, FIELD_ERRORS))
        outcome = deliver(JiraChannel(sandbox_settings(sb)), notification(), HttpTransport())
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("jira:http_400 priority: Specify a valid priority")


def test_scripted_rate_limit_is_retryable_when_sandbox_plays_it():
    with Sandbox() as sb:
        sb.script(
            "jira",
            Reply(429, {"errorMessages": ["Rate limit exceeded."]}, headers={"Retry-After": "3"}),
        )
        outcome = deliver(JiraChannel(sandbox_settings(sb)), notification(), HttpTransport())
    assert outcome == Retryable("jira:http_429", 3.0)


def test_injected_fault_is_retryable_when_sandbox_error_rate_is_one():
    with Sandbox(error_rate=1.0) as sb:
        outcome = deliver(JiraChannel(sandbox_settings(sb)), notification(), HttpTransport())
    assert outcome == Retryable("jira:http_503", None)
