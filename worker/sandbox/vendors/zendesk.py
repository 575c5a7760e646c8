"""Zendesk Support tickets as the sandbox plays them: create (201 + Location, Idempotency-Key
honoured) and internal note (PUT, 200 with the audit).

Real shapes: developer.zendesk.com/api-reference/ticketing/tickets/tickets/ and
.../ticketing/introduction/#idempotency.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
import threading
from datetime import UTC, datetime
from typing import Any

from worker.sandbox.server import Recorded, Reply, Sandbox

_TICKETS = re.compile(r"^/zendesk/api/v2/tickets(?:\.json)?$")
_TICKET = re.compile(r"^/zendesk/api/v2/tickets/(\d+)(?:\.json)?$")
PRIORITIES = frozenset({"urgent", "high", "normal", "low"})
TYPES = frozenset({"problem", "incident", "question", "task"})

# Idempotency check-and-store must be atomic across the server's request threads.
_lock = threading.Lock()


def _authenticated(req: Recorded) -> bool:
    header = req.headers.get("authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return "@" in user and bool(secret)


def _record_invalid(field: str, description: str, error: str = "InvalidValue") -> Reply:
    return Reply(
        422,
        {
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {field: [{"description": description, "error": error}]},
        },
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    match = _TICKET.match(req.path)
    creating = bool(_TICKETS.match(req.path)) and req.method == "POST"
    if not creating and not (match and req.method == "PUT"):
        return Reply(404, {"error": "InvalidEndpoint", "description": "Not found"})
    if not _authenticated(req):
        return Reply(
            401,
            {"error": "Couldn't authenticate you"},
            headers={"WWW-Authenticate": 'Basic realm="Web Password"'},
        )
    try:
        body = req.json()
    except ValueError:
        return Reply(400, {"error": "Unprocessable Entity", "description": "Malformed JSON"})
    ticket = body.get("ticket") if isinstance(body, dict) else None
    if not isinstance(ticket, dict):
        return Reply(400, {"error": "InvalidEndpoint", "description": "'ticket' is required"})
    if creating:
        return _create(sandbox, req, ticket)
    assert match is not None
    return _note(sandbox, int(match.group(1)), ticket)


def _create(sandbox: Sandbox, req: Recorded, ticket: dict[str, Any]) -> Reply:
    key = req.headers.get("idempotency-key")
    if key is None:
        return _create_ticket(sandbox, req, ticket)
    digest = hashlib.sha256(req.body).hexdigest()
    with _lock:
        stored: dict[str, tuple[str, Reply]] = sandbox.state.setdefault("zendesk.idempotency", {})
        if key in stored:
            seen, reply = stored[key]
            if seen != digest:
                return Reply(
                    400,
                    {
                        "error": "IdempotentRequestError",
                        "description": "Request parameters do not match the original"
                        " request for this idempotency key",
                    },
                )
            return Reply(
                reply.status, reply.body, headers={**reply.headers, "x-idempotency-lookup": "hit"}
            )
        reply = _create_ticket(sandbox, req, ticket)
        if reply.status < 500:
            # Zendesk replays the response as first sent, not the ticket's current state.
            stored[key] = (digest, copy.deepcopy(reply))
    return Reply(
        reply.status, reply.body, headers={**reply.headers, "x-idempotency-lookup": "miss"}
    )


def _create_ticket(sandbox: Sandbox, req: Recorded, ticket: dict[str, Any]) -> Reply:
    comment = ticket.get("comment")
    if not isinstance(comment, dict) or not str(comment.get("body") or "").strip():
        return _record_invalid("base", "Description: cannot be blank", "BlankValue")
    if ticket.get("priority") is not None and ticket["priority"] not in PRIORITIES:
        return _record_invalid("priority", "Priority: is not valid")
    if ticket.get("type") is not None and ticket["type"] not in TYPES:
        return _record_invalid("type", "Type: is not valid")
    ticket_id = sandbox.next_id()
    now = _now()
    host = req.headers.get("host", "127.0.0.1")
    stored = {
        "id": ticket_id,
        "url": f"http://{host}/zendesk/api/v2/tickets/{ticket_id}.json",
        "subject": ticket.get("subject"),
        "raw_subject": ticket.get("subject"),
        "description": comment["body"],
        "priority": ticket.get("priority"),
        "type": ticket.get("type"),
        "status": "new",
        "tags": sorted(set(ticket.get("tags") or [])),
        "group_id": ticket.get("group_id"),
        "requester_id": 90_000 + ticket_id,
        "created_at": now,
        "updated_at": now,
    }
    sandbox.state.setdefault("zendesk.tickets", {})[ticket_id] = stored
    audit = {
        "id": sandbox.next_id(),
        "ticket_id": ticket_id,
        "created_at": now,
        "events": [
            {
                "id": sandbox.next_id(),
                "type": "Comment",
                "body": comment["body"],
                "public": bool(comment.get("public", True)),
            }
        ],
    }
    return Reply(201, {"ticket": stored, "audit": audit}, headers={"Location": stored["url"]})


def _note(sandbox: Sandbox, ticket_id: int, update: dict[str, Any]) -> Reply:
    stored = sandbox.state.get("zendesk.tickets", {}).get(ticket_id)
    if stored is None:
        return Reply(404, {"error": "RecordNotFound", "description": "Not found"})
    comment = update.get("comment")
    if not isinstance(comment, dict) or not str(comment.get("body") or "").strip():
        return _record_invalid("base", "Comment: cannot be blank", "BlankValue")
    stored["tags"] = sorted(set(stored["tags"]) | set(update.get("additional_tags") or []))
    stored["updated_at"] = _now()
    audit = {
        "id": sandbox.next_id(),
        "ticket_id": ticket_id,
        "created_at": stored["updated_at"],
        "events": [
            {
                "id": sandbox.next_id(),
                "type": "Comment",
                "body": comment["body"],
                "public": bool(comment.get("public", True)),
            }
        ],
    }
    return Reply(200, {"ticket": stored, "audit": audit})
