"""What the product knows of a customer, as channels see it (the store is in worker.store)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Contact:
    email: str
    name: str | None = None
    #: E.164 when known.
    phone: str | None = None
    #: IANA zone name, e.g. "Asia/Tokyo".
    timezone: str | None = None
    sms_opt_out: bool = False
    push_enabled: bool = True
    email_unsubscribed: bool = False
    fcm_tokens: tuple[str, ...] = ()
