"""What every channel shares: request/response shapes, outcomes, errors, the delivery pipeline.

Channels are pure adapters (house-style.md): `build_request()` and `classify()` do no I/O and know
nothing of Celery or the database; `channels.http` is the only module that touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from channels.contacts import Contact
from channels.envelope import DispatchRequest


class DispatchError(Exception):
    """A dispatch that cannot be attempted at all; never retried."""


class ChannelConfigError(DispatchError):
    """Configuration is missing or unsafe (a credential, a base URL). Names the variable."""


class PayloadError(DispatchError):
    """The request cannot be expressed for this vendor."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One validated request plus what the product knows of its recipient."""

    request: DispatchRequest
    contact: Contact | None = None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    form: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    #: Header names lower-cased.
    headers: Mapping[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Sent:
    response_id: str | None


@dataclass(frozen=True, slots=True)
class Retryable:
    reason: str
    #: Seconds the vendor asked us to wait; None = the retry table's delay.
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    #: "<vendor>:<vendor_code>", e.g. "slack:channel_not_found".
    reason: str


@dataclass(frozen=True, slots=True)
class InvalidRecipient:
    """The vendor refused the recipient for good; `action` says what the contacts store changes."""

    reason: str
    #: "opt_out_sms" | "remove_fcm_token" | "unsubscribe_email" | None
    action: str | None = None
    #: The address the vendor refused (E.164 number, FCM token), so `action` knows what to change.
    #: Filled in by `deliver()` from the channel's `target_for(n)` when the channel has one.
    target: str | None = None


Outcome = Sent | Retryable | Permanent | InvalidRecipient


class Channel(Protocol):
    name: str

    def build_request(self, n: Notification) -> HttpRequest:
        """The vendor request for `n`; raises ChannelConfigError or PayloadError."""
        ...

    def classify(self, response: HttpResponse) -> Outcome:
        """What the vendor's answer means for this message."""
        ...


class Transport(Protocol):
    def send(self, request: HttpRequest) -> HttpResponse | Retryable: ...


class TransientError(Exception):
    """Building the request needs a resource that is briefly unavailable (e.g. the OAuth token
    endpoint answered 5xx); `deliver()` turns it into a Retryable, never a failure."""


def deliver(channel: Channel, n: Notification, transport: Transport) -> Outcome:
    """The fixed pipeline: build, send, classify.

    An InvalidRecipient comes back with `target` set to the address the channel used (the
    response alone does not say which FCM token or number was refused).
    """
    try:
        request = channel.build_request(n)
    except TransientError as exc:
        return Retryable(str(exc))
    result = transport.send(request)
    if isinstance(result, Retryable):
        return recordable(result)
    outcome = channel.classify(result)
    if isinstance(outcome, InvalidRecipient) and outcome.target is None:
        target_for = getattr(channel, "target_for", None)
        if callable(target_for):
            outcome = replace(outcome, target=target_for(n))
    return recordable(outcome)


#: comms_log.response_id holds this many characters (design.md §3).
MAX_RESPONSE_ID = 255
#: The most of a vendor's error text a receipt keeps.
MAX_REASON = 2000


def recordable(outcome: Outcome) -> Outcome:
    """The outcome with the vendor's own words made fit for a receipt: a vendor may answer
    anything, and a receipt that cannot be written after a send looks like a send that failed.
    A NUL (which PostgreSQL refuses) becomes U+FFFD; an overlong id or reason is cut."""
    if isinstance(outcome, Sent):
        if outcome.response_id is None:
            return outcome
        response_id = without_nul(outcome.response_id)[:MAX_RESPONSE_ID]
        return outcome if response_id == outcome.response_id else Sent(response_id)
    reason = without_nul(outcome.reason)[:MAX_REASON]
    return outcome if reason == outcome.reason else replace(outcome, reason=reason)


def without_nul(text: str) -> str:
    """`text` with each NUL (which PostgreSQL refuses in text) replaced by U+FFFD."""
    return text.replace("\x00", "\ufffd")


def require(value: object, variable: str) -> str:
    """A configured value as text, or ChannelConfigError naming the environment variable."""
    if value is None or value == "":
        raise ChannelConfigError(f"{variable} is not set")
    secret = getattr(value, "get_secret_value", None)
    text = secret() if callable(secret) else value
    if not text:
        raise ChannelConfigError(f"{variable} is not set")
    return str(text)
