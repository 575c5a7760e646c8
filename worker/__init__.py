"""The Celery application (`celery -A worker worker|beat`), its configuration and operator tools.

`worker.app` is built on first access, so importing a submodule (the sandbox, the store) does not
read settings or create the Celery app as a side effect.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
