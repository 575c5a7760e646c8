"""SendGrid v3 Mail Send (`POST /sendgrid/v3/mail/send`) as the sandbox plays it.

202 with an empty body and an `X-Message-Id` header, like the real API; 401 without a Bearer key.
"""

from __future__ import annotations

import secrets

from worker.sandbox.server import Recorded, Reply, Sandbox


def _errors(status: int, message: str, field: str | None = None) -> Reply:
    return Reply(status, {"errors": [{"message": message, "field": field, "help": None}]})


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    if req.path != "/sendgrid/v3/mail/send" or req.method != "POST":
        return _errors(404, "resource not found")
    if not req.headers.get("authorization", "").startswith("Bearer "):
        return _errors(401, "The provided authorization grant is invalid, expired, or revoked")
    try:
        body = req.json()
    except ValueError:
        return _errors(400, "Bad Request")
    if not isinstance(body, dict) or not body.get("personalizations"):
        return _errors(400, "The personalizations field is required.", "personalizations")
    if not isinstance(body.get("from"), dict) or not body["from"].get("email"):
        return _errors(400, "The from object must be provided for every email send.", "from")
    if not body.get("content"):
        return _errors(400, "Unless a valid template_id is provided, the content parameter is"
                            " required.", "content")
    # Real ids are 22 url-safe characters; `sg_message_id` in events starts with it.
    message_id = secrets.token_urlsafe(16)[:22]
    sandbox.state.setdefault("sendgrid_sent", []).append(message_id)
    return Reply(202, None, {"X-Message-Id": message_id})
