"""Twilio Messages (`POST /twilio/2010-04-01/Accounts/{sid}/Messages.json`) as the sandbox plays it.

201 with a queued Message resource; 401 (code 20003) without Basic auth for the path's account;
400 code 21211 for a `To` that is not E.164; 400 code 21610 for numbers in
`sandbox.state["twilio_opted_out"]` (a set the test fills to script a STOP).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from email.utils import formatdate

from worker.sandbox.server import Recorded, Reply, Sandbox

_PATH = re.compile(r"^/twilio/2010-04-01/Accounts/(?P<sid>AC[0-9a-fA-F]{32})/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def error(status: int, code: int, message: str) -> Reply:
    """A Twilio error in its real shape."""
    return Reply(status, {"code": code, "message": message,
                          "more_info": f"https://www.twilio.com/docs/errors/{code}",
                          "status": status})


def _basic_user(header: str) -> str | None:
    if not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[len("Basic "):], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return user if sep and password else None


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    match = _PATH.match(req.path)
    if match is None or req.method != "POST":
        return error(404, 20404, f"The requested resource {req.path} was not found")
    sid = match["sid"]
    if _basic_user(req.headers.get("authorization", "")) != sid:
        return error(401, 20003, "Authenticate")
    if not req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return error(415, 20415, "Unsupported Media Type")
    form = req.form()
    to = form.get("To", "")
    if not to:
        return error(400, 21604, "A 'To' phone number is required.")
    if not form.get("Body"):
        return error(400, 21602, "Message body is required.")
    if not _E164.match(to):
        return error(400, 21211, f"Invalid 'To' Phone Number: {to}")
    if to in sandbox.state.setdefault("twilio_opted_out", set()):
        return error(400, 21610, "Attempt to send to unsubscribed recipient")
    message_sid = "SM" + secrets.token_hex(16)
    now = formatdate(usegmt=True)
    return Reply(201, {
        "account_sid": sid,
        "api_version": "2010-04-01",
        "body": form["Body"],
        "date_created": now,
        "date_updated": now,
        "date_sent": None,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": form.get("From"),
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": message_sid,
        "status": "queued",
        "to": to,
        "uri": f"/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
    })
