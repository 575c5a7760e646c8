"""Sandbox core: routing to vendor handlers, request recording, scripted replies, latency."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Recorded:
    """One request as the sandbox received it."""

    vendor: str
    method: str
    path: str
    query: dict[str, list[str]]
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes
    #: time.time() when it arrived.
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace"),
            "at": self.at,
        }


@dataclass
class Reply:
    status: int = 200
    #: dict/list -> JSON; str/bytes as is.
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Close the connection without answering (after `delay`): the client sees a failure.
    drop: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reply:
        return cls(
            **{k: data[k] for k in ("status", "body", "headers", "delay", "drop") if k in data}
        )


@dataclass
class _Rule:
    vendor: str
    replies: deque[Reply]
    contains: str | None
    repeat: bool

    def take(self, recorded: Recorded) -> Reply | None:
        if recorded.vendor != self.vendor or not self.replies:
            return None
        if (
            self.contains is not None
            and self.contains.encode() not in recorded.body + recorded.path.encode()
        ):
            return None
        return self.replies[0] if self.repeat and len(self.replies) == 1 else self.replies.popleft()


#: A vendor's default behaviour: the reply a healthy vendor would give.
Handler = Callable[["Sandbox", Recorded], Reply]


class Sandbox:
    """Start with `start()` (or `with Sandbox() as sb:`); vendors live at `{url}/{vendor}/...`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        error_rate: float = 0.0,
    ) -> None:
        from worker.sandbox.vendors import HANDLERS, transient_error

        self._handlers: dict[str, Handler] = HANDLERS
        self._transient_error = transient_error
        self.latency = latency
        self.error_rate = error_rate
        self._lock = threading.Lock()
        self._recorded: list[Recorded] = []
        self._rules: list[_Rule] = []
        self._counter = 0
        #: Vendor-side state handlers keep (idempotency keys, ids, tokens issued...).
        self.state: dict[str, Any] = {}
        self._server = _QuietServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Sandbox:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests and the demo use -------------------------------------------------------------

    def requests(self, vendor: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._recorded if vendor is None or r.vendor == vendor]

    def clear(self) -> None:
        """Forget recorded requests, scripted rules and vendor state."""
        with self._lock:
            self._recorded.clear()
            self._rules.clear()
            self.state.clear()

    def script(
        self, vendor: str, *replies: Reply, contains: str | None = None, repeat: bool = False
    ) -> None:
        """Answer the next requests to `vendor` (whose body contains `contains`) with `replies`, in
        order; with `repeat`, the last reply answers for ever. Later requests get the default."""
        with self._lock:
            self._rules.append(_Rule(vendor, deque(replies), contains, repeat))

    def next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def env(self) -> dict[str, str]:
        """Environment that points the product at this sandbox, with sandbox credentials."""
        from worker.sandbox.vendors import sandbox_env

        return sandbox_env(self.url)

    # -- request handling ------------------------------------------------------------------------

    def _record(self, recorded: Recorded) -> Reply:
        with self._lock:
            self._recorded.append(recorded)
            for rule in self._rules:
                reply = rule.take(recorded)
                if reply is not None:
                    return reply
        if self.error_rate and random.random() < self.error_rate:
            return self._transient_error(recorded.vendor)
        handler = self._handlers.get(recorded.vendor)
        if handler is None:
            return Reply(404, {"error": f"sandbox has no vendor {recorded.vendor!r}"})
        return handler(self, recorded)

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        if path == "/_sandbox/requests" and method == "GET":
            return Reply(200, [r.as_dict() for r in self.requests()])
        if path == "/_sandbox/requests" and method == "DELETE":
            self.clear()
            return Reply(204)
        if path == "/_sandbox/script" and method == "POST":
            data = json.loads(body)
            replies = [Reply.from_dict(r) for r in data["replies"]]
            self.script(
                data["vendor"],
                *replies,
                contains=data.get("contains"),
                repeat=bool(data.get("repeat")),
            )
            return Reply(204)
        if path == "/_sandbox/config" and method == "POST":
            data = json.loads(body)
            self.latency = float(data.get("latency", self.latency))
            self.error_rate = float(data.get("error_rate", self.error_rate))
            return Reply(204)
        return Reply(404, {"error": "unknown sandbox control path"})


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up before its answer (a worker killed mid-call, a read timeout) is
    what the sandbox is there to play: no traceback for it. Anything else is still printed."""

    #: The listen backlog. A class attribute because the constructor already listens: set on the
    #: instance it was ignored and the backlog was socketserver's 5, so a burst of new
    #: connections (the benchmark's naive reference) was reset.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def _make_handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes; with Nagle on, the body waits for the client's
        # delayed ACK (≈ 40 ms on Linux) and every vendor call looked 40 ms slower than it was.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            if parts.path.startswith("/_sandbox/"):
                reply = sandbox._control(self.command, parts.path, body)
            else:
                vendor = parts.path.strip("/").split("/", 1)[0]
                recorded = Recorded(
                    vendor=vendor,
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.time(),
                )
                reply = sandbox._record(recorded)
                wait = reply.delay + sandbox.latency
                if wait:
                    time.sleep(wait)
            if reply.drop:
                self.close_connection = True
                return
            self._answer(reply)

        def _answer(self, reply: Reply) -> None:
            if isinstance(reply.body, bytes):
                payload, ctype = reply.body, "application/octet-stream"
            elif isinstance(reply.body, str):
                payload, ctype = reply.body.encode(), "text/plain; charset=utf-8"
            elif reply.body is None:
                payload, ctype = b"", None
            else:
                payload, ctype = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
            self.send_response(reply.status)
            headers = dict(reply.headers)
            if ctype and not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = ctype
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    return _Handler
