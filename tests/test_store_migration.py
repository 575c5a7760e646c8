"""A worker's threads reach the database together when it starts with a backlog: the process must
build one engine, and the first-use migration must run once while the others wait for it, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url

from tests.conftest import DATABASE_URL
from tests.together import all_at_once

THREADS = 16


def migrate_together(engine: Engine) -> list[BaseException]:
    from worker.store.db import migrate_once

    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            migrate_once(engine)
        except BaseException as exc:  # the test reports every one
            errors.append(exc)

    all_at_once(first_use, [()] * THREADS)
    return errors


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    from worker.store.schema import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def assert_migrated(engine: Engine) -> None:
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [head_revision()]
    assert {"dispatches", "comms_log", "contacts"} <= set(inspect(engine).get_table_names())


@pytest.fixture
def fresh_postgres() -> Iterator[Engine]:
    from worker.store.db import create_database

    url = make_url(DATABASE_URL).set(database=f"comms_migrate_{uuid.uuid4().hex[:12]}")
    create_database(url.render_as_string(hide_password=False))
    engine = create_engine(url, pool_size=THREADS)
    try:
        yield engine
    finally:
        engine.dispose()
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}"'))
        admin.dispose()


def test_threads_starting_together_migrate_a_new_sqlite_database_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'comms.db'}",
                           connect_args={"check_same_thread": False, "timeout": 30})

    assert migrate_together(engine) == []
    assert_migrated(engine)


def test_threads_starting_together_migrate_a_new_postgres_database_once(
        fresh_postgres: Engine) -> None:
    assert migrate_together(fresh_postgres) == []
    assert_migrated(fresh_postgres)


def test_threads_starting_together_share_one_engine(fresh_postgres: Engine) -> None:
    from worker.store.db import engine_for

    url = fresh_postgres.url.render_as_string(hide_password=False)
    engines: list[Engine] = []
    # Switch threads as often as the interpreter can: a worker's first build also imports the
    # dialect, a long window for the other threads to arrive.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        all_at_once(lambda: engines.append(engine_for(url)), [()] * THREADS)
    finally:
        sys.setswitchinterval(interval)
    try:
        # One engine, one pool: an engine per thread opened connections past max_connections.
        assert len(engines) == THREADS
        assert len({id(e) for e in engines}) == 1
    finally:
        engines[0].dispose()
