"""Entry point for benchmark workers on the gevent pool: `celery -A worker.bench_gevent:app worker
-P gevent` (the product) or `-A worker.bench_gevent:bench_app` (the reference tasks).

Celery monkey-patches the standard library for `-P gevent` before it imports this module;
psycopg2 is a C extension, so it needs psycogreen's wait callback to yield instead of blocking
the whole worker (celery-notes.md §10). Needs `pip install gevent psycogreen`.
"""

from __future__ import annotations

import importlib

importlib.import_module("psycogreen.gevent").patch_psycopg()

from worker.bench_tasks import app as bench_app  # noqa: E402
from worker.celery_app import app  # noqa: E402

__all__ = ["app", "bench_app"]
