"""The webhook receiver over real HTTP on 127.0.0.1: signed unsubscribe links and Twilio status
callbacks change the contacts store; forged ones change nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
import requests
from twilio.request_validator import RequestValidator

from channels.sendgrid import unsubscribe_url
from config.settings import get_settings
from worker.store import contacts
from worker.webhooks import serve

pytestmark = pytest.mark.usefixtures("clean")

BASE = "https://hooks.example.test"  # COMMS_WEBHOOK_BASE_URL in tests/conftest.py


@pytest.fixture
def receiver() -> Iterator[str]:
    server = serve("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _local(url: str, receiver: str) -> str:
    return url.replace(BASE, receiver)


def _found(email: str):
    found = contacts.get(email)
    assert found is not None
    return found


def test_unsubscribe_recorded_when_link_from_an_email_is_followed(receiver):
    link = unsubscribe_url(get_settings(), "jane@example.com")

    reply = requests.get(_local(link, receiver), timeout=5)

    assert reply.status_code == 200
    assert "jane@example.com will get no more" in reply.text
    assert _found("jane@example.com").email_unsubscribed is True


def test_forbidden_and_nothing_recorded_when_link_is_forged(receiver):
    link = unsubscribe_url(get_settings(), "jane@example.com").replace("jane%40", "bob%40")

    reply = requests.get(_local(link, receiver), timeout=5)

    assert reply.status_code == 403
    assert contacts.get("bob@example.com") is None


def _signed(form: dict[str, str], token: str) -> str:
    return str(RequestValidator(token).compute_signature(f"{BASE}/sms/status", form))


def test_sms_opt_out_recorded_when_twilio_reports_21610(receiver):
    contacts.merge_profile("jane@example.com", {"phone": "(415) 555-0123"})
    form = {
        "MessageSid": "SM1",
        "MessageStatus": "failed",
        "ErrorCode": "21610",
        "To": "+14155550123",
    }

    reply = requests.post(
        f"{receiver}/sms/status",
        data=urlencode(form),
        timeout=5,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": _signed(form, "sandbox-twilio-auth-token"),
        },
    )

    assert reply.status_code == 204
    assert _found("jane@example.com").sms_opt_out is True


def test_forbidden_and_nothing_recorded_when_status_signature_is_wrong(receiver):
    contacts.merge_profile("jane@example.com", {"phone": "+14155550123"})
    form = {"MessageSid": "SM1", "ErrorCode": "21610", "To": "+14155550123"}

    reply = requests.post(
        f"{receiver}/sms/status",
        data=form,
        timeout=5,
        headers={"X-Twilio-Signature": _signed(form, "another-token")},
    )

    assert reply.status_code == 403
    assert _found("jane@example.com").sms_opt_out is False


def _post_raw(receiver: str, content_length: str, body: bytes = b"") -> bytes:
    """A POST with a Content-Length of our choosing (requests would correct it)."""
    import socket

    port = int(receiver.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /sms/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: " + content_length.encode("latin-1") + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(4096), b""))


@pytest.mark.parametrize(("length", "status"), [
    ("abc", b"400"), ("-5", b"400"), ("\u00b2", b"400"), (str(64 * 1024 + 1), b"413"),
])
def test_refused_without_reading_when_content_length_is_bad_or_too_big(receiver, length, status):
    reply = _post_raw(receiver, length, b"To=%2B14155550123&ErrorCode=21610")

    assert reply.split(b" ", 2)[1] == status


def test_receiver_still_serves_after_a_refused_callback(receiver):
    _post_raw(receiver, "-1")

    assert requests.get(f"{receiver}/healthz", timeout=5).text == "ok"
