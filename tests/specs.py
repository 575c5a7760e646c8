"""Validate outgoing vendor requests against the vendors' own OpenAPI documents (openapi-core).

Shared by every channel's tests (vendor-notes.md §5). Specs live in `COMMS_VENDOR_SPECS_DIR`, else
`config.settings.DEFAULT_VENDOR_SPECS` (the sibling `shared/vendor-specs`); tests skip when absent.

openapi-core only accepts a request whose URL matches one of the spec's `servers`, so a request
captured from the sandbox (`http://127.0.0.1:<port>/<vendor>/...`) or built for a real tenant
(`https://acme.atlassian.net/...`) is rewritten onto the spec's own server URL first: the loopback
prefix (or the real base path) is replaced by the spec server, keeping the operation path.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest

from channels.base import HttpRequest
from config.settings import DEFAULT_VENDOR_SPECS
from worker.sandbox import Recorded


@dataclass(frozen=True)
class VendorSpec:
    #: Relative to the specs folder.
    file: str
    #: The spec server that requests are rewritten onto (origin + base path).
    server: str
    #: Path prefix of the vendor in the sandbox (loopback host).
    sandbox_prefix: str
    #: Strict: the spec must pass openapi-spec-validator; lenient ones fail it (vendor-notes §5).
    strict: bool
    yaml: bool = False


VENDORS: dict[str, VendorSpec] = {
    "slack": VendorSpec(
        "derived/slack-web-openapi3.derived.json",
        "https://slack.com/api",
        "/slack/api",
        strict=True,
    ),
    # Strict fails: UnresolvableParameterError on '/api/v2/channels/voice/tickets'.
    "zendesk": VendorSpec(
        "zendesk-support.yaml", "https://example.zendesk.com", "/zendesk", strict=False, yaml=True
    ),
    # Strict fails: `default: ''` outside its enum.
    "jira": VendorSpec(
        "jira-cloud-platform-v3.json", "https://your-domain.atlassian.net", "/jira", strict=False
    ),
    "pagerduty": VendorSpec(
        "pagerduty-events-v2.json", "https://events.pagerduty.com/v2", "/pagerduty/v2", strict=True
    ),
    "sendgrid": VendorSpec(
        "sendgrid-mail-v3.json", "https://api.sendgrid.com", "/sendgrid", strict=True
    ),
    "twilio": VendorSpec("twilio-api-v2010.json", "https://api.twilio.com", "/twilio", strict=True),
    "fcm": VendorSpec(
        "derived/fcm-v1-openapi.derived.json", "https://fcm.googleapis.com", "/fcm", strict=True
    ),
}

#: Product channel name -> vendor, for callers that hold a channel name.
VENDOR_BY_CHANNEL = {"email": "sendgrid", "sms": "twilio", "push": "fcm"}

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def specs_dir() -> Path:
    return Path(os.environ.get("COMMS_VENDOR_SPECS_DIR") or DEFAULT_VENDOR_SPECS)


def _spec_path(vendor: str) -> Path:
    path = specs_dir() / VENDORS[vendor].file
    if not path.is_file():
        pytest.skip(f"vendor specs not found at {path}: set COMMS_VENDOR_SPECS_DIR")
    return path


@cache
def _load(path: Path, vendor: str) -> OpenAPI:
    # Loading is slow (Jira ~2 s, Zendesk ~1 s), so each spec is loaded once per test run.
    info = VENDORS[vendor]
    with path.open("rb") as fh:
        # CSafeLoader: the pure-Python loader takes many seconds on Zendesk's 1.2 MB YAML. Twilio
        # must be read as JSON: its `\ud83d` escapes break PyYAML (OpenAPI.from_file_path).
        spec: dict[str, Any] = (
            yaml.load(fh, Loader=yaml.CSafeLoader) if info.yaml else json.load(fh)
        )
    if info.strict:
        return OpenAPI.from_dict(spec)
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


def api(vendor: str) -> OpenAPI:
    """The vendor's loaded spec (skips the test when the specs folder is absent)."""
    vendor = VENDOR_BY_CHANNEL.get(vendor, vendor)
    if vendor not in VENDORS:
        raise ValueError(f"no vendor spec for {vendor!r}; known: {sorted(VENDORS)}")
    return _load(_spec_path(vendor), vendor)


def _operation_path(vendor: str, url: str) -> tuple[str, str]:
    """(path relative to the vendor's base, query string) of a sandbox or real vendor URL."""
    info = VENDORS[vendor]
    parts = urlsplit(url)
    path = parts.path
    prefix = (
        info.sandbox_prefix
        if (parts.hostname or "") in LOOPBACK_HOSTS
        else urlsplit(info.server).path
    )
    if prefix and not (path == prefix or path.startswith(prefix + "/")):
        raise AssertionError(f"{vendor}: {url} is not under the vendor base path {prefix!r}")
    rest = path[len(prefix) :] if prefix else path
    if vendor == "zendesk":
        # The product calls Zendesk's documented `.json` paths; the spec's paths have no suffix
        # and the live API accepts both (vendor-notes §2, Zendesk "Paths").
        rest = re.sub(r"\.json$", "", rest)
    return rest, parts.query


def _slack_as_form(
    headers: dict[str, str], body: bytes | None, content_type: str | None
) -> tuple[dict[str, str], bytes | None, str | None]:
    """Slack's spec only knows the legacy form body plus a `token` header (a generator artefact,
    vendor-notes §3). The product sends JSON with `Authorization: Bearer`, which real Slack
    accepts, so the validator checks the same arguments in the form representation the spec
    describes: nested values as JSON strings, booleans as "true"/"false", token from Bearer."""
    if content_type is None or not content_type.startswith("application/json"):
        return headers, body, content_type
    data = json.loads(body or b"{}")
    if not isinstance(data, dict):
        raise AssertionError(f"slack: JSON body must be an object, got {type(data).__name__}")
    form: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            form[key] = "true" if value else "false"
        elif isinstance(value, dict | list):
            form[key] = json.dumps(value)
        else:
            form[key] = str(value)
    out = dict(headers)
    auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
    if auth.lower().startswith("bearer ") and not any(k.lower() == "token" for k in headers):
        out["token"] = auth[len("bearer ") :]
    form_type = "application/x-www-form-urlencoded"
    out = {k: v for k, v in out.items() if k.lower() != "content-type"}
    out["Content-Type"] = form_type
    return out, urlencode(form).encode(), form_type


def validate_request(
    vendor: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    content_type: str | None,
) -> None:
    """Raise (openapi-core's validation errors) unless the request conforms to the vendor spec."""
    vendor = VENDOR_BY_CHANNEL.get(vendor, vendor)
    spec = api(vendor)
    hdrs = dict(headers)
    if vendor == "slack":
        hdrs, body, content_type = _slack_as_form(hdrs, body, content_type)
    rest, query = _operation_path(vendor, url)
    server = urlsplit(VENDORS[vendor].server)
    request = MockRequest(
        f"{server.scheme}://{server.netloc}",
        method.lower(),
        server.path + rest,
        args=dict(parse_qsl(query, keep_blank_values=True)),
        headers=hdrs,
        data=body,
        content_type=content_type or "application/json",
    )
    with warnings.catch_warnings():
        # openapi-core cannot check oauth2 schemes (Slack, FCM) and says so with a UserWarning,
        # which the suite's `filterwarnings = error` would turn into a failure.
        warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning)
        spec.validate_request(request)


def _encode(req: HttpRequest) -> tuple[bytes | None, str | None]:
    ctype = next((v for k, v in req.headers.items() if k.lower() == "content-type"), None)
    if req.json is not None:
        return json.dumps(req.json).encode(), ctype or "application/json"
    if req.form is not None:
        return urlencode(req.form).encode(), ctype or "application/x-www-form-urlencoded"
    return None, ctype


def validate_http_request(vendor: str, req: HttpRequest) -> None:
    """Validate a request a channel built, encoded the way HttpTransport sends it."""
    body, ctype = _encode(req)
    validate_request(vendor, req.method, req.url, req.headers, body, ctype)


def validate_recorded(recorded: Recorded) -> None:
    """Validate a request the sandbox received (its vendor is the first path segment)."""
    url = f"http://127.0.0.1{recorded.path}"
    if recorded.query:
        url += "?" + urlencode(recorded.query, doseq=True)
    validate_request(
        recorded.vendor,
        recorded.method,
        url,
        recorded.headers,
        recorded.body or None,
        recorded.headers.get("content-type"),
    )
