"""Run one function in many threads released at the same instant: the races are the point."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def all_at_once(target: Callable[..., Any], calls: Sequence[tuple[Any, ...]], *,
                timeout: float = 60.0) -> None:
    """`target(*args)` for each args in `calls`, each in its own thread, all starting together."""
    start = threading.Barrier(len(calls))

    def run(*args: Any) -> None:
        start.wait()
        target(*args)

    threads = [threading.Thread(target=run, args=args) for args in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread ran past {timeout} s"
