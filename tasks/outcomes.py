"""Task results and receipts as JSON-safe dicts (they cross the broker and the result backend)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypedDict


class Result(TypedDict):
    """What a channel task returns: the chord callback turns it into the terminal receipt."""

    message_id: str
    #: The Celery task that produced it (the chord callback frees its stored result).
    task_id: str
    channel: str
    outcome: str  # SENT | FAILED | SUPPRESSED | DEFERRED | SKIPPED
    response_id: str | None
    retry_count: int
    error: str | None


def result(
    message_id: uuid.UUID | str,
    task_id: str,
    channel: str,
    outcome: str,
    *,
    response_id: str | None = None,
    retry_count: int = 0,
    error: str | None = None,
) -> Result:
    return Result(
        message_id=str(message_id),
        task_id=task_id,
        channel=channel,
        outcome=outcome,
        response_id=response_id,
        retry_count=retry_count,
        error=error,
    )


def dispatch_receipt(
    message_id: uuid.UUID | str,
    channel: str,
    status: str,
    *,
    response_id: str | None = None,
    retry_count: int = 0,
    error: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """The seed's output shape."""
    receipt: dict[str, Any] = {
        "channel": channel,
        "timestamp": (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "message_id": str(message_id),
        "status": status.lower(),
        "response_id": response_id,
        "retry_count": retry_count,
    }
    if error:
        receipt["error"] = error
    return {"dispatch_receipt": receipt}
