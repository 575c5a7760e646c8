"""What every channel shares: the request/response shapes, outcomes, errors and the delivery pipeline.

Channels are pure adapters (house-style.md): `build_request()` and `classify()` do no I/O and know
nothing of Celery or the database; `channels.http` is the only module that touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.envelope import DispatchRequest
from channels.contacts import Contact


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
    """The vendor refused the recipient for good; `action` tells the contacts store what to change."""

    reason: str
    #: "opt_out_sms" | "remove_fcm_token" | "unsubscribe_email" | None
    action: str | None = None


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


def deliver(channel: Channel, n: Notification, transport: Transport) -> Outcome:
    """The fixed pipeline: build, send, classify."""
    result = transport.send(channel.build_request(n))
    return result if isinstance(result, Retryable) else channel.classify(result)


def require(value: object, variable: str) -> str:
    """A configured value as text, or ChannelConfigError naming the environment variable."""
    if value is None or value == "":
        raise ChannelConfigError(f"{variable} is not set")
    secret = getattr(value, "get_secret_value", None)
    text = secret() if callable(secret) else value
    if not text:
        raise ChannelConfigError(f"{variable} is not set")
    return str(text)
