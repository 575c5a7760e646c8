"""OAuth 2.0 access tokens for FCM HTTP v1 from a service-account JSON file.

API reference: https://firebase.google.com/docs/cloud-messaging/auth-server
google-auth signs an RS256 JWT with the account's key and exchanges it at the file's `token_uri`
(`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`); `Credentials.refresh` posts to
`self._token_uri`, read from the file, so a sandbox account file redirects the exchange (the JWT's
`aud` stays `https://oauth2.googleapis.com/token` whatever the file says: google-auth 2.x). Tokens
last an hour; one set of credentials per file is cached in-process and refreshed only when
google-auth says it is no longer `valid` (expired, or within its 3m45s refresh margin), so many
messages cost one token fetch.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from channels.base import ChannelConfigError, TransientError

SCOPES = ["https://www.googleapis.com/auth/firebase.messaging"]
#: Seconds for one call to the token endpoint (google-auth's own default is 120).
TOKEN_TIMEOUT = 10.0


class TokenCache:
    """Service-account credentials per file path, each refreshed under its own lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, Any]] = {}

    def token(self, path: Path | str | None) -> str:
        """A valid access token for the account in `path`; fetched only when needed."""
        if path is None or str(path) == "":
            raise ChannelConfigError("FCM_SERVICE_ACCOUNT_FILE is not set")
        key = str(path)
        lock, creds = self._entry(key)
        with lock:
            if not creds.valid:
                self._refresh(creds)
            return str(creds.token)

    def invalidate(self, path: Path | str) -> None:
        """Forget the account in `path` (e.g. after rotating the file)."""
        with self._lock:
            self._entries.pop(str(path), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _entry(self, key: str) -> tuple[threading.Lock, Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = (threading.Lock(), _load(key))
                self._entries[key] = entry
            return entry

    @staticmethod
    def _refresh(creds: Any) -> None:
        request = functools.partial(google.auth.transport.requests.Request(), timeout=TOKEN_TIMEOUT)
        try:
            creds.refresh(request)
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"fcm:oauth_unreachable {type(exc).__name__}") from None
        except google.auth.exceptions.RefreshError as exc:
            # RefreshError.retryable: 5xx/429 from the token endpoint. Otherwise the account is
            # wrong (invalid_grant: deleted key, bad clock, wrong token_uri): an operator's job.
            if getattr(exc, "retryable", False):
                raise TransientError("fcm:oauth_unavailable") from None
            raise ChannelConfigError(
                f"FCM_SERVICE_ACCOUNT_FILE: the token endpoint refused the account ({_brief(exc)})"
            ) from None


def _load(path: str) -> Any:
    if not Path(path).is_file():
        raise ChannelConfigError(f"FCM_SERVICE_ACCOUNT_FILE: no such file {path!r}")
    try:
        return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            path, scopes=SCOPES
        )
    except (ValueError, KeyError, OSError) as exc:
        # The message of a malformed key can quote key material: keep only the exception type.
        raise ChannelConfigError(
            f"FCM_SERVICE_ACCOUNT_FILE: {path!r} is not a service-account key file"
            f" ({type(exc).__name__})"
        ) from None


def _brief(exc: Exception) -> str:
    # google-auth puts the token endpoint's JSON in args[1]; its "error" code is safe to log.
    details = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(details, dict) and details.get("error"):
        return str(details["error"])
    return type(exc).__name__


#: The process's cache, shared by every FcmChannel.
TOKENS = TokenCache()


def access_token(path: Path | str | None) -> str:
    """A valid FCM access token for the service account in `path` (cached per process)."""
    return TOKENS.token(path)
