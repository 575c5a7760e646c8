"""Vendor behaviour in the sandbox: one module per vendor, each a handler for healthy answers.

A vendor is reached at `{sandbox}/{vendor}/...`; `sandbox_env()` gives the product's URL variables.
"""

from __future__ import annotations

from worker.sandbox.server import Handler, Reply
from worker.sandbox.vendors import slack

HANDLERS: dict[str, Handler] = {
    "slack": slack.handle,
}

#: What an injected random failure looks like, per vendor (default: a bare 503).
TRANSIENT_ERRORS: dict[str, Reply] = {
    "slack": Reply(503, {"ok": False, "error": "service_unavailable"}),
}


def transient_error(vendor: str) -> Reply:
    return TRANSIENT_ERRORS.get(vendor, Reply(503, {"error": "service unavailable (sandbox)"}))


def sandbox_env(url: str) -> dict[str, str]:
    """Environment variables pointing every channel at the sandbox, with sandbox credentials."""
    return {
        "SLACK_API_URL": f"{url}/slack/api",
        "SLACK_BOT_TOKEN": "xoxb-sandbox-token",
    }
