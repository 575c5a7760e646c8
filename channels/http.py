"""The one HTTP layer: one thread-safe urllib3 pool per process (keep-alive, per vendor host),
timeouts on every call, and the status rules all vendors share (429 + Retry-After, 5xx, auth).

urllib3 rather than a requests.Session on top of it: requests spent ≈ 0.7 ms of CPU per call on
work this product does not need (hooks, cookies, environment merging), about a sixth of a
message's whole cost (docs/scaling.md)."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)

from channels.base import HttpRequest, HttpResponse, Outcome, Permanent, Retryable

#: Longest wait (s) taken from a vendor's Retry-After; beyond it the task layer parks the message.
MAX_RETRY_AFTER = 24 * 3600.0

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait per a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify_status(response: HttpResponse, vendor: str) -> Outcome | None:
    """The shared rules for a non-2xx answer; None for a 2xx (the vendor module decides)."""
    status = response.status
    if 200 <= status < 300:
        return None
    if status in RETRYABLE_STATUSES:
        return Retryable(
            f"{vendor}:http_{status}", parse_retry_after(response.header("retry-after"))
        )
    if status in (401, 403):
        return Permanent(f"{vendor}:auth_http_{status}")
    return Permanent(f"{vendor}:http_{status}")


def _user_agent() -> str:
    try:
        return f"meow-comms/{version('meow-comms')}"
    except PackageNotFoundError:
        return "meow-comms"


USER_AGENT = _user_agent()


@lru_cache(maxsize=256)
def proxy_for(origin: str) -> str | None:
    """The environment's proxy (HTTPS_PROXY, NO_PROXY...) for one scheme://host, read once."""
    parts = urlsplit(origin)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def encode_body(request: HttpRequest) -> tuple[bytes | None, dict[str, str]]:
    """The body bytes and the content type they need (JSON or a form, as requests would send)."""
    if request.json is not None:
        return json.dumps(request.json, allow_nan=False).encode(), {
            "Content-Type": "application/json"}
    if request.form is not None:
        return urlencode(dict(request.form), doseq=True).encode(), {
            "Content-Type": "application/x-www-form-urlencoded"}
    return None, {}


class HttpTransport:
    """Sends HttpRequests; connection errors and timeouts come back as Retryable, never raised."""

    def __init__(
        self, connect_timeout: float = 5.0, read_timeout: float = 30.0, pool_size: int = 64
    ):
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._managers: dict[str | None, urllib3.PoolManager] = {}

    def _manager(self, proxy: str | None) -> urllib3.PoolManager:
        manager = self._managers.get(proxy)
        if manager is None:
            with self._lock:
                manager = self._managers.get(proxy)
                if manager is None:
                    # One pool per vendor host, `pool_size` keep-alive connections each; a burst
                    # beyond that opens (and closes) extra ones rather than waiting.
                    ca_certs = (os.environ.get("REQUESTS_CA_BUNDLE")
                                or os.environ.get("SSL_CERT_FILE"))
                    if proxy:
                        manager = urllib3.ProxyManager(proxy, num_pools=32,
                                                       maxsize=self.pool_size, ca_certs=ca_certs)
                    else:
                        manager = urllib3.PoolManager(num_pools=32, maxsize=self.pool_size,
                                                      ca_certs=ca_certs)
                    self._managers[proxy] = manager
        return manager

    def send(self, request: HttpRequest) -> HttpResponse | Retryable:
        body, content_type = encode_body(request)
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "gzip, deflate",
                   **content_type, **dict(request.headers)}
        try:
            reply = self._manager(proxy_for(_origin(request.url))).request(
                request.method,
                request.url,
                body=body,
                headers=headers,
                timeout=self.timeout,
                redirect=False,
                retries=False,
            )
        except NewConnectionError as exc:  # before ConnectTimeoutError: it is a subclass
            return Retryable(f"transport:connection_error:{type(exc).__name__}")
        except ConnectTimeoutError:
            return Retryable("transport:connect_timeout")
        except ReadTimeoutError:
            # The vendor may have acted on it; only vendor idempotency keys make this retry safe.
            return Retryable("transport:read_timeout")
        except HTTPError as exc:
            return Retryable(f"transport:connection_error:{type(exc).__name__}")
        return HttpResponse(
            status=reply.status,
            headers={k.lower(): v for k, v in reply.headers.items()},
            body=reply.data,
        )
