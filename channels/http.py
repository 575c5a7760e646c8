"""The one HTTP layer: a keep-alive `requests.Session` per thread, timeouts on every call,
and the status rules all vendors share (429 + Retry-After, 5xx, auth)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

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


@lru_cache(maxsize=256)
def _proxies_for(origin: str) -> dict[str, str]:
    """The environment's proxies (HTTPS_PROXY, NO_PROXY...) for one scheme://host, read once:
    requests re-reads the environment (and ~/.netrc) on every call otherwise."""
    return dict(requests.utils.get_environ_proxies(origin))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class HttpTransport:
    """Sends HttpRequests; connection errors and timeouts come back as Retryable, never raised."""

    def __init__(
        self, connect_timeout: float = 5.0, read_timeout: float = 30.0, pool_size: int = 64
    ):
        self.timeout = (connect_timeout, read_timeout)
        self.pool_size = pool_size
        self._local = threading.local()

    def _session(self) -> requests.Session:
        # requests.Session is not documented as thread-safe: one per thread, each keeping
        # its own keep-alive connections.
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # The environment is applied once here and in _proxies_for, not on every call.
            session.trust_env = False
            session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                              or os.environ.get("CURL_CA_BUNDLE") or True)
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=self.pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def send(self, request: HttpRequest) -> HttpResponse | Retryable:
        try:
            reply = self._session().request(
                request.method,
                request.url,
                headers=dict(request.headers),
                json=request.json,
                data=request.form,
                timeout=self.timeout,
                allow_redirects=False,
                proxies=_proxies_for(_origin(request.url)),
            )
        except requests.ConnectTimeout:
            return Retryable("transport:connect_timeout")
        except requests.ReadTimeout:
            # The vendor may have acted on it; only vendor idempotency keys make this retry safe.
            return Retryable("transport:read_timeout")
        except requests.ConnectionError as exc:
            return Retryable(f"transport:connection_error:{type(exc).__name__}")
        return HttpResponse(
            status=reply.status_code,
            headers={k.lower(): v for k, v in reply.headers.items()},
            body=reply.content,
        )
