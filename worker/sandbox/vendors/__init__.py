"""Vendor behaviour in the sandbox: one module per vendor, each a handler for healthy answers.

A vendor is reached at `{sandbox}/{vendor}/...`; `sandbox_env()` gives the product's URL variables.
"""

from __future__ import annotations

from worker.sandbox.server import Handler, Reply
from worker.sandbox.vendors import fcm, jira, pagerduty, sendgrid, slack, twilio, zendesk

HANDLERS: dict[str, Handler] = {
    "slack": slack.handle,
    "zendesk": zendesk.handle,
    "jira": jira.handle,
    "pagerduty": pagerduty.handle,
    "sendgrid": sendgrid.handle,
    "twilio": twilio.handle,
    "fcm": fcm.handle,
    # Google's OAuth token endpoint, named by a service-account file's `token_uri`.
    "oauth2": fcm.handle_oauth2,
}

#: What an injected random failure looks like, per vendor (default: a bare 503).
TRANSIENT_ERRORS: dict[str, Reply] = {
    "slack": Reply(503, {"ok": False, "error": "service_unavailable"}),
    # Zendesk's maintenance answer is a plain-text 503; its Retry-After is left out so injected
    # faults exercise the retry table's delays.
    "zendesk": Reply(503, "Service Unavailable: maintenance in progress"),
    "jira": Reply(503, {"errorMessages": ["Service Unavailable"], "errors": {}}),
    "pagerduty": Reply(500, {"status": "error", "message": "Internal Server Error"}),
    "sendgrid": Reply(503, {"errors": [{"field": None, "message": "v3 Web API is not available"}]}),
    "twilio": twilio.error(503, 20503, "Service Unavailable"),
    "fcm": fcm.error(503, "UNAVAILABLE", "The service is currently unavailable."),
    "oauth2": Reply(503, {"error": "temporarily_unavailable",
                          "error_description": "The service is currently unavailable."}),
}


def transient_error(vendor: str) -> Reply:
    return TRANSIENT_ERRORS.get(vendor, Reply(503, {"error": "service unavailable (sandbox)"}))


def sandbox_env(url: str) -> dict[str, str]:
    """Environment variables pointing every channel at the sandbox, with sandbox credentials."""
    return {
        "SLACK_API_URL": f"{url}/slack/api",
        "SLACK_BOT_TOKEN": "xoxb-sandbox-token",
        "ZENDESK_BASE_URL": f"{url}/zendesk",
        "ZENDESK_SUBDOMAIN": "sandbox",
        "ZENDESK_EMAIL": "agent@sandbox.example",
        "ZENDESK_API_TOKEN": "sandbox-zendesk-token",
        "JIRA_BASE_URL": f"{url}/jira",
        "JIRA_EMAIL": "bot@sandbox.example",
        "JIRA_API_TOKEN": "sandbox-jira-token",
        "PAGERDUTY_EVENTS_URL": f"{url}/pagerduty/v2/enqueue",
        # Integration keys are 32 characters.
        "PAGERDUTY_ROUTING_KEY": "sandbox0000000000000000000000000",
        "PAGERDUTY_ROUTING_KEY_BILLING": "sandboxbilling000000000000000000",
        "PAGERDUTY_ROUTING_KEY_NETWORK": "sandboxnetwork000000000000000000",
        "SENDGRID_API_URL": f"{url}/sendgrid",
        "SENDGRID_API_KEY": "SG.sandbox-key.sandbox-secret",
        "TWILIO_API_URL": f"{url}/twilio",
        # The spec enforces ^AC[0-9a-fA-F]{32}$.
        "TWILIO_ACCOUNT_SID": "AC" + "5a" * 16,
        "TWILIO_AUTH_TOKEN": "sandbox-twilio-auth-token",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "FCM_API_URL": f"{url}/fcm",
        "FCM_PROJECT_ID": "meow-sandbox",
        # FCM_SERVICE_ACCOUNT_FILE: a file, so the caller writes it with
        # worker.sandbox.vendors.fcm.write_service_account(path, url).
    }
