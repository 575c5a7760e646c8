"""The webhook receiver (`comms webhooks`): what vendors and customers call back.

- `GET /email/unsubscribe?email=&sig=`: the link in every e-mail footer. The signature (HMAC of the
  address under COMMS_UNSUBSCRIBE_SECRET) proves we issued it for that address; the store records
  the unsubscribe, and later e-mails to that customer are SUPPRESSED.
- `POST /sms/status`: Twilio's StatusCallback. Only requests signed with our auth token
  (X-Twilio-Signature) are believed; an ErrorCode of 21610 (the customer texted STOP) records the
  SMS opt-out. Twilio retries callbacks, so everything here is idempotent.
- `GET /healthz`.

Served behind the operator's TLS proxy at COMMS_WEBHOOK_BASE_URL; the signed URL is that public one.
"""

from __future__ import annotations

import html
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import RequestValidator

from channels.sendgrid import verify_unsubscribe
from config.settings import Settings, get_settings
from worker.store import contacts

log = logging.getLogger(__name__)

#: The largest body a callback may have: Twilio's status callbacks are a few hundred bytes, and
#: this endpoint faces the internet.
MAX_BODY = 64 * 1024

#: Twilio error codes in a status callback that mean the customer refuses SMS.
OPT_OUT_CODES = frozenset({"21610"})


def unsubscribe(query: dict[str, list[str]], settings: Settings) -> tuple[int, str]:
    email = (query.get("email") or [""])[0]
    sig = (query.get("sig") or [""])[0]
    secret = settings.comms_unsubscribe_secret.get_secret_value()
    if not email or not verify_unsubscribe(email, sig, secret):
        return 403, "This unsubscribe link is not valid."
    contacts.set_flags(email, email_unsubscribed=True)
    return 200, f"{html.escape(email)} will get no more of these e-mails."


def sms_status(url: str, form: dict[str, str], signature: str, settings: Settings) -> int:
    token = settings.twilio_auth_token
    if token is None or not RequestValidator(token.get_secret_value()).validate(
        url, form, signature
    ):
        return 403
    if form.get("ErrorCode") in OPT_OUT_CODES and form.get("To"):
        phone = form["To"]
        log.info("twilio reports %s for %s: recording the SMS opt-out", form["ErrorCode"], phone)
        contacts.opt_out_phone(phone)
    return 204


def body_length(header: str | None) -> int | tuple[int, str]:
    """The bytes to read for a POST, or the (status, text) refusing it: a length that is not a
    number (a negative one would read until the client hangs up) or is over MAX_BODY."""
    text = header or "0"
    if not (text.isascii() and text.isdigit()):  # "²" is a digit to isdigit, not to int()
        return 400, "Content-Length must be a number of bytes."
    if int(text) > MAX_BODY:
        return 413, f"The body is limited to {MAX_BODY} bytes."
    return int(text)


def make_handler(settings: Settings) -> type[BaseHTTPRequestHandler]:
    base = (settings.comms_webhook_base_url or "").rstrip("/")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

        def _reply(self, status: int, text: str = "") -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                self._reply(200, "ok")
            elif parts.path == "/email/unsubscribe":
                self._reply(*unsubscribe(parse_qs(parts.query), settings))
            else:
                self._reply(404, "not found")

        def do_POST(self) -> None:
            length = body_length(self.headers.get("Content-Length"))
            if isinstance(length, tuple):
                self.close_connection = True  # an unread body must not be taken for a request
                self._reply(*length)
                return
            raw = self.rfile.read(length).decode("utf-8", "replace")
            parts = urlsplit(self.path)
            if parts.path == "/email/unsubscribe":  # one-click unsubscribe (RFC 8058) posts
                self._reply(*unsubscribe(parse_qs(parts.query), settings))
            elif parts.path == "/sms/status":
                form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                signature = self.headers.get("X-Twilio-Signature", "")
                self._reply(sms_status(f"{base}{self.path}", form, signature, settings))
            else:
                self._reply(404, "not found")

    return Handler


def serve(host: str, port: int, settings: Settings | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(settings or get_settings()))
    server.daemon_threads = True
    return server
