"""Firebase Cloud Messaging HTTP v1:
`POST {FCM_API_URL}/v1/projects/{FCM_PROJECT_ID}/messages:send`.

API reference: https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
OAuth 2.0 Bearer token from the service account (`channels.fcm.oauth`), JSON body. Success is 200
{"name": "projects/{project_id}/messages/{message_id}"}, the receipt. Errors carry an FcmError
code in `details` (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode):
    {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
               "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED"}]}}

`build_request` is pure except for the access token, which the cache fetches at most once an
hour per service account.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from channels.base import (
    ChannelConfigError,
    HttpRequest,
    HttpResponse,
    InvalidRecipient,
    Notification,
    Outcome,
    PayloadError,
    Permanent,
    Retryable,
    Sent,
    require,
)
from channels.envelope import PushPayload
from channels.fcm.oauth import access_token
from channels.http import parse_retry_after
from config.settings import Settings

#: The token is dead or belongs to another Firebase project: delete it from the contact.
#: Never INVALID_ARGUMENT: a payload bug would wipe every token (hackers-pub/hackerspub#251).
REMOVE_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
#: May heal by itself; honour Retry-After, else the retry table.
RETRYABLE_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})
#: Credentials: ours (PERMISSION_DENIED, UNAUTHENTICATED) or the APNs/web-push ones in Firebase.
AUTH_CODES = frozenset({"THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED", "UNAUTHENTICATED"})

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


class FcmChannel:
    name = "push"

    def __init__(self, settings: Settings,
                 token_source: Callable[[Path | None], str] = access_token) -> None:
        self.settings = settings
        #: Service-account file -> OAuth access token; injectable for tests.
        self.token_source = token_source

    def target_for(self, n: Notification) -> str:
        """The device token this notification goes to (payload, contacts store, envelope)."""
        payload = cast(PushPayload, n.request.payload)
        if payload.device_fcm_token:
            return payload.device_fcm_token
        if n.contact is not None and n.contact.fcm_tokens:
            return n.contact.fcm_tokens[0]
        if n.request.customer is not None and n.request.customer.fcm_token:
            return n.request.customer.fcm_token
        raise PayloadError("no FCM device token for this customer")

    def build_request(self, n: Notification) -> HttpRequest:
        project = require(self.settings.fcm_project_id, "FCM_PROJECT_ID")
        if self.settings.fcm_service_account_file is None:
            raise ChannelConfigError("FCM_SERVICE_ACCOUNT_FILE is not set")
        payload = cast(PushPayload, n.request.payload)
        device = self.target_for(n)
        token = self.token_source(self.settings.fcm_service_account_file)
        # FCM data values must be strings ("1 is not of type 'string'"); absent keys are omitted.
        data = {
            key: str(value)
            for key, value in (("deep_link", payload.deep_link_url),
                               ("signal_type", n.request.signal_type))
            if value is not None
        }
        message: dict[str, Any] = {
            "token": device,
            "notification": {"title": payload.push_title, "body": payload.push_body},
        }
        if data:
            message["data"] = data
        # The seed writes "high"; the API's enum (AndroidMessagePriority) is NORMAL | HIGH, and the
        # spec rejects the lower-case form, so the canonical name is sent.
        message["android"] = {"priority": "HIGH"}
        message["apns"] = {"payload": {"aps": {"sound": "default"}}}
        return HttpRequest(
            "POST",
            f"{self.settings.fcm_api_url.rstrip('/')}/v1/projects/{project}/messages:send",
            headers={"Authorization": f"Bearer {token}",
                     "Content-Type": "application/json; charset=utf-8"},
            json={"message": message},
        )

    def classify(self, response: HttpResponse) -> Outcome:
        status = response.status
        data = response.json()
        if 200 <= status < 300:
            name = data.get("name") if isinstance(data, dict) else None
            return Sent(str(name) if name is not None else None)
        code, grpc_status = _error_codes(data)
        reason = f"fcm:{code or grpc_status or f'http_{status}'}"
        retry_after = parse_retry_after(response.header("retry-after"))
        if code in REMOVE_TOKEN_CODES or status == 410:
            return InvalidRecipient(reason, action="remove_fcm_token")
        if code in RETRYABLE_CODES or grpc_status in RETRYABLE_CODES or status in (429, 500, 503):
            return Retryable(reason, retry_after)
        if code in AUTH_CODES or grpc_status in AUTH_CODES or status in (401, 403):
            return Permanent(f"fcm:auth {reason.removeprefix('fcm:')}")
        if status in (502, 504):
            return Retryable(reason, retry_after)
        return Permanent(reason)


def _error_codes(data: object) -> tuple[str | None, str | None]:
    """(FcmError errorCode, google.rpc status) from an FCM error body; None where absent."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    grpc_status = error.get("status")
    code = None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("@type") == _FCM_ERROR_TYPE:
            code = detail.get("errorCode")
            break
    return (str(code) if code else None), (str(grpc_status) if grpc_status else None)
