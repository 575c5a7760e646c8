"""Engines and transactions. One engine per database URL per process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from config.settings import get_settings
from worker.store import schema

T = TypeVar("T")


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The process's one engine for `url`. Built under a lock: a worker starting with a backlog
    has all its threads here at once, and an engine each (functools.cache builds on every
    concurrent miss) opened more connections than PostgreSQL's max_connections."""
    engine = _engines.get(url)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(url)
            if engine is None:
                engine = _engines[url] = _create_engine(url)
    return engine


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Worker threads share the file: wait for the write lock instead of failing, and use WAL so
        # readers do not block the writer.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # No pool_pre_ping: it costs a round trip per transaction. A connection that died with the
    # server fails its first statement instead; SQLAlchemy then drops the whole pool, and the
    # callers retry (with_db_retry, the dispatch task's autoretry).
    settings = get_settings()
    return create_engine(url, pool_size=settings.comms_db_pool_size,
                         max_overflow=settings.comms_db_max_overflow, pool_recycle=1800)


def create_database(url: str) -> None:
    """Create the PostgreSQL database `url` names when it is missing (tests, the benchmark);
    other databases (SQLite) create themselves."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        return
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
            ).first()
            if not found:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        admin.dispose()


_migrated: set[Engine] = set()
#: alembic keeps its running context in module globals: two threads migrating at once break each
#: other (KeyError 'config', "table already exists"), and PostgreSQL's advisory lock only
#: serialises them while the engine opens transactions (SQLite has no such lock at all).
_migrating = threading.Lock()


def get_engine() -> Engine:
    """The engine for COMMS_DATABASE_URL, migrated to the current schema on first use."""
    engine = engine_for(get_settings().comms_database_url)
    migrate_once(engine)
    return engine


def migrate_once(engine: Engine) -> None:
    """Bring `engine`'s database to the current schema, once per process, one thread at a time:
    a worker's threads all reach their first statement together when it starts with a backlog."""
    if engine in _migrated:
        return
    with _migrating:
        if engine not in _migrated:
            schema.upgrade(engine)
            _migrated.add(engine)


@contextmanager
def transaction() -> Iterator[Connection]:
    with get_engine().begin() as conn:
        yield conn


def with_db_retry(fn: Callable[[], T], *, patience: float = 30.0, first_delay: float = 0.5) -> T:
    """Run `fn` (one whole transaction), retrying while the database is unreachable.

    Used for writes that must not be dropped (a receipt after a vendor already acted): the task must
    not fail and re-send because PostgreSQL blinked. Tries again with backoff (0.5 s doubling, at
    most 10 s apart) for `patience` seconds, then raises the last error. Other errors (a bug, a
    constraint) raise at once.
    """
    deadline = time.monotonic() + patience
    delay = first_delay
    while True:
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            if not is_connection_problem(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def is_connection_problem(exc: BaseException) -> bool:
    """The database could not be reached (as opposed to a bug or a constraint)."""
    if not isinstance(exc, DBAPIError):
        return False
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError)
