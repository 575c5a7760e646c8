"""Celery tasks: dispatch/routing, one task per channel, receipts, fallbacks, drains.

Thin by design: vendor knowledge lives in `channels/`, state in `worker.store`.
"""

from tasks import channel_tasks, dispatch, fallbacks, maintenance, receipts

__all__ = ["channel_tasks", "dispatch", "fallbacks", "maintenance", "receipts"]
