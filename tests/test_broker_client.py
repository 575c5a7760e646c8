"""The broker's Redis replies are parsed in C (hiredis), in the worker's own connections."""

from __future__ import annotations

from typing import Any

from redis._parsers import _HiredisParser


def test_the_workers_broker_connections_parse_replies_with_hiredis(celery_app: Any) -> None:
    # The connection kombu consumes and acks on, not just "hiredis is importable": redis-py falls
    # back to its pure-Python parser silently when the extension is missing.
    with celery_app.connection_for_read() as conn:
        pool = conn.default_channel.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.connect()
            assert isinstance(connection._parser, _HiredisParser)
            assert connection.send_command("PING") is None
            assert connection.read_response() in (b"PONG", "PONG")
        finally:
            pool.release(connection)
