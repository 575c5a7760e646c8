"""The sandbox stands in for vendors that take many new connections at once: a burst of clients
that each open their own connection (as `requests.post` does) must all be answered."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.together import all_at_once
from worker.sandbox.server import Sandbox

CLIENTS = 300


@pytest.fixture
def quiet_sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox(latency=0.0).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def test_a_burst_of_new_connections_is_answered_not_reset(quiet_sandbox: Sandbox) -> None:
    host, port = quiet_sandbox.url.removeprefix("http://").split(":")
    answers: list[bytes | BaseException] = []

    def client() -> None:
        try:
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(b"GET /_sandbox/requests HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
                answers.append(conn.recv(12))
        except OSError as exc:
            answers.append(exc)

    all_at_once(client, [()] * CLIENTS, timeout=30)
    failures = [a for a in answers if not isinstance(a, bytes) or not a.startswith(b"HTTP/1.1")]
    assert len(answers) == CLIENTS
    assert failures == []
