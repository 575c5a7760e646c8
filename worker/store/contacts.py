"""The contacts store: customers' phone, zone, consent and push tokens. Opt-outs recorded here
always win over anything a request says; a request only fills in what the store does not know."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, func, select, update

from channels.checks import InvalidPhoneNumber, normalize_phone
from channels.contacts import Contact
from config.settings import get_settings
from worker.store import group_commit
from worker.store.db import transaction
from worker.store.dispatches import _dialect_insert
from worker.store.group_commit import GroupCommit
from worker.store.models import Contact as ContactRow
from worker.store.models import FcmToken, utcnow

contacts = cast(Table, ContactRow.__table__)
tokens = cast(Table, FcmToken.__table__)

#: Fields a request's `customer` may set (never consent flags: those come from the customer).
PROFILE_FIELDS = ("name", "phone", "timezone")


def _e164(phone: str | None) -> str | None:
    """Numbers are kept in E.164 when they parse (so Twilio's callbacks match them); one that does
    not parse is kept as given, and the SMS check reports it."""
    if not phone:
        return phone
    try:
        return normalize_phone(phone, get_settings().comms_default_phone_region)
    except InvalidPhoneNumber:
        return phone


class _Statements:
    """Built once per dialect (the pre-dispatch check runs them for every customer message)."""

    def __init__(self, dialect_name: str) -> None:
        self.contact = (
            select(contacts, tokens.c.token)
            .outerjoin(tokens, tokens.c.email == contacts.c.email)
            .where(contacts.c.email == bindparam("b_email"))
            .order_by(tokens.c.created_at.desc())
        )
        upsert = _dialect_insert(dialect_name, contacts).values(
            email=bindparam("b_email"), sms_opt_out=False, push_enabled=True,
            email_unsubscribed=False, updated_at=bindparam("b_now"),
            **{k: bindparam(f"b_{k}") for k in PROFILE_FIELDS})
        self.ensure = upsert.on_conflict_do_nothing(index_elements=["email"])
        # A field the request leaves out (NULL) keeps the stored value.
        self.merge = upsert.on_conflict_do_update(
            index_elements=["email"],
            set_={**{k: func.coalesce(upsert.excluded[k], contacts.c[k]) for k in PROFILE_FIELDS},
                  "updated_at": bindparam("b_now")})
        self.add_token = (
            _dialect_insert(dialect_name, tokens)
            .values(token=bindparam("b_token"), email=bindparam("b_email"),
                    created_at=bindparam("b_now"))
            .on_conflict_do_nothing(index_elements=["token"])
        )


@cache
def _built(dialect_name: str) -> _Statements:
    return _Statements(dialect_name)


def _contact(conn: Connection, email: str) -> Contact | None:
    rows = conn.execute(_built(conn.dialect.name).contact, {"b_email": email}).all()
    if not rows:
        return None
    row = rows[0]
    return Contact(email=row.email, name=row.name, phone=row.phone, timezone=row.timezone,
                   sms_opt_out=row.sms_opt_out, push_enabled=row.push_enabled,
                   email_unsubscribed=row.email_unsubscribed,
                   fcm_tokens=tuple(r.token for r in rows if r.token is not None))


def get(email: str) -> Contact | None:
    with transaction() as conn:
        return _contact(conn, email.lower())


def _ensure(conn: Connection, email: str) -> None:
    """The contact's row, created with the defaults (consent given, no profile) when missing."""
    conn.execute(_built(conn.dialect.name).ensure,
                 {"b_email": email, "b_now": utcnow(), **{f"b_{k}": None for k in PROFILE_FIELDS}})


def _add_token(conn: Connection, email: str, token: str, now: datetime | None = None) -> None:
    conn.execute(_built(conn.dialect.name).add_token,
                 {"b_token": token, "b_email": email, "b_now": now or utcnow()})


@dataclass(frozen=True, slots=True)
class _Merge:
    """What one request tells of its recipient."""

    email: str
    values: dict[str, str]  # profile fields the request gives (phone in E.164)
    token: str | None
    now: datetime


def merge_profile(email: str, profile: dict[str, Any] | None) -> Contact:
    """Upsert what a request says of its recipient (name, phone, zone, token); the store's
    consent flags are never changed by a request. Returns the resulting contact."""
    values = {k: profile[k] for k in PROFILE_FIELDS if profile and profile.get(k)}
    if "phone" in values:
        values["phone"] = _e164(values["phone"])
    token = str(profile["fcm_token"]) if profile and profile.get("fcm_token") else None
    merge = _Merge(email.lower(), values, token, utcnow())
    if group_commit.enabled():
        return _merge_group(merge)
    return _merge_one(merge)


def _merge_one(m: _Merge) -> Contact:
    with transaction() as conn:
        st = _built(conn.dialect.name)
        conn.execute(st.merge if m.values else st.ensure, {
            "b_email": m.email, "b_now": m.now,
            **{f"b_{k}": m.values.get(k) for k in PROFILE_FIELDS}})
        if m.token:
            _add_token(conn, m.email, m.token, m.now)
        contact = _contact(conn, m.email)
    assert contact is not None
    return contact


# Group commit (PostgreSQL): the merges of every thread at the same moment in three statements.
# A row without profile fields is only ensured (the WHERE skips the update), as `ensure` does.
_MERGE_MANY = """
INSERT INTO contacts (email, name, phone, timezone, sms_opt_out, push_enabled,
    email_unsubscribed, updated_at)
SELECT email, name, phone, timezone, false, true, false, now
FROM unnest(%(email)s::text[], %(name)s::text[], %(phone)s::text[], %(timezone)s::text[],
    %(now)s::timestamptz[]) AS i(email, name, phone, timezone, now)
ON CONFLICT (email) DO UPDATE SET
    name = coalesce(excluded.name, contacts.name),
    phone = coalesce(excluded.phone, contacts.phone),
    timezone = coalesce(excluded.timezone, contacts.timezone),
    updated_at = excluded.updated_at
WHERE excluded.name IS NOT NULL OR excluded.phone IS NOT NULL OR excluded.timezone IS NOT NULL
"""
_ADD_TOKENS = """
INSERT INTO fcm_tokens (token, email, created_at)
SELECT * FROM unnest(%(token)s::text[], %(email)s::text[], %(now)s::timestamptz[])
ON CONFLICT (token) DO NOTHING
"""
_CONTACTS = """
SELECT c.email, c.name, c.phone, c.timezone, c.sms_opt_out, c.push_enabled,
    c.email_unsubscribed, t.token
FROM contacts c LEFT JOIN fcm_tokens t ON t.email = c.email
WHERE c.email = ANY(%(email)s::text[])
ORDER BY t.created_at DESC
"""


def _merge_many(batch: Sequence[_Merge]) -> list[Contact]:
    """`_merge_one` for many requests, one per recipient (GroupCommit writes a recipient's
    second merge alone afterwards, so each caller sees the contact as its own merge left it)."""
    # Tokens in their own key order: batches lock shared token rows in one order too.
    with_token = sorted((m for m in batch if m.token), key=lambda m: str(m.token))
    with transaction() as conn:
        conn.exec_driver_sql(_MERGE_MANY, {
            "email": [m.email for m in batch], "now": [m.now for m in batch],
            **{k: [m.values.get(k) for m in batch] for k in PROFILE_FIELDS}})
        if with_token:
            conn.exec_driver_sql(_ADD_TOKENS, {
                "token": [m.token for m in with_token], "email": [m.email for m in with_token],
                "now": [m.now for m in with_token]})
        found: dict[str, Contact] = {}
        for row in conn.exec_driver_sql(_CONTACTS, {"email": [m.email for m in batch]}):
            known = found.get(row.email)
            found[row.email] = replace(
                known or Contact(email=row.email, name=row.name, phone=row.phone,
                                 timezone=row.timezone, sms_opt_out=row.sms_opt_out,
                                 push_enabled=row.push_enabled,
                                 email_unsubscribed=row.email_unsubscribed),
                fcm_tokens=(*(known.fcm_tokens if known else ()),
                            *((row.token,) if row.token is not None else ())))
    return [found[m.email] for m in batch]


_merge_group = GroupCommit(_merge_many, _merge_one, key=lambda m: m.email,
                           delay=group_commit.configured_delay)


def set_flags(email: str, **flags: bool) -> None:
    """Record consent: sms_opt_out, push_enabled, email_unsubscribed."""
    unknown = set(flags) - {"sms_opt_out", "push_enabled", "email_unsubscribed"}
    if unknown:
        raise ValueError(f"unknown consent flags: {sorted(unknown)}")
    email = email.lower()
    with transaction() as conn:
        _ensure(conn, email)
        conn.execute(update(contacts).where(contacts.c.email == email)
                     .values(**flags, updated_at=utcnow()))


def remove_token(token: str) -> bool:
    with transaction() as conn:
        return bool(conn.execute(delete(tokens).where(tokens.c.token == token)).rowcount)


@dataclass(frozen=True, slots=True)
class ImportRow:
    email: str
    name: str | None = None
    phone: str | None = None
    timezone: str | None = None
    sms_opt_out: bool | None = None
    push_enabled: bool | None = None
    email_unsubscribed: bool | None = None
    fcm_tokens: tuple[str, ...] = ()


def import_rows(rows: Iterable[ImportRow]) -> int:
    """Upsert a batch in one transaction; fields left None keep the stored value.

    Rows are written in address order (stable: a later line for the same address still wins),
    the order in which group-committed merges lock contacts: an import and the workers' merges
    then wait for each other instead of deadlocking."""
    count = 0
    with transaction() as conn:
        for row in sorted(rows, key=lambda r: r.email.lower()):
            email = row.email.lower()
            _ensure(conn, email)
            values = {
                k: getattr(row, k)
                for k in ("name", "phone", "timezone", "sms_opt_out", "push_enabled",
                          "email_unsubscribed")
                if getattr(row, k) is not None
            }
            if "phone" in values:
                values["phone"] = _e164(values["phone"])
            if values:
                conn.execute(update(contacts).where(contacts.c.email == email)
                             .values(**values, updated_at=utcnow()))
            for token in row.fcm_tokens:
                _add_token(conn, email, token)
            count += 1
    return count


def opt_out_phone(phone: str) -> int:
    """Record an SMS opt-out for every contact with this number; returns how many."""
    with transaction() as conn:
        return int(conn.execute(
            update(contacts).where(contacts.c.phone == _e164(phone))
            .values(sms_opt_out=True, updated_at=utcnow())
        ).rowcount)
