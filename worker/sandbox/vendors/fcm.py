"""FCM HTTP v1 (`POST /fcm/v1/projects/{p}/messages:send`) and Google's OAuth token endpoint
(`POST /oauth2/token`) as the sandbox plays them.

The token endpoint takes the service-account JWT grant google-auth sends and issues
`ya29.sandbox-<n>` tokens, counted in `sandbox.state["oauth2_token_requests"]`; its lifetime is
`sandbox.state.get("oauth2_expires_in", 3600)` seconds. messages:send needs one of the issued
tokens; tokens in `sandbox.state["fcm_unregistered"]` get 404 UNREGISTERED.
`write_service_account()` makes a throwaway service-account file whose `token_uri` is the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import weakref
from pathlib import Path
from typing import Any

from worker.sandbox.server import Recorded, Reply, Sandbox

_SEND = re.compile(r"^/fcm/v1/projects/(?P<project>[^/]+)/messages:send$")
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

#: Tokens each sandbox issued. Kept outside `sandbox.state` so `Sandbox.clear()` between tests does
#: not revoke a token the product still caches (real Google tokens outlive our bookkeeping too).
_ISSUED: weakref.WeakKeyDictionary[Sandbox, set[str]] = weakref.WeakKeyDictionary()


def error(status: int, grpc_status: str, message: str, error_code: str | None = None) -> Reply:
    """An FCM error in its real shape (google.rpc.Status, FcmError detail when FCM adds one)."""
    body: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    if error_code is not None:
        body["details"] = [{"@type": _FCM_ERROR_TYPE, "errorCode": error_code}]
    return Reply(status, {"error": body})


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    match = _SEND.match(req.path)
    if match is None or req.method != "POST":
        return error(404, "NOT_FOUND", "Requested entity was not found.")
    auth = req.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in _ISSUED.get(sandbox, ()):
        return error(401, "UNAUTHENTICATED",
                     "Request had invalid authentication credentials. Expected OAuth 2 access"
                     " token, login cookie or other valid authentication credential.")
    try:
        body = req.json()
    except ValueError:
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "INVALID_ARGUMENT")
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict) or not message.get("token"):
        return error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                     "INVALID_ARGUMENT")
    data = message.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data': not a string.",
                     "INVALID_ARGUMENT")
    if message["token"] in sandbox.state.setdefault("fcm_unregistered", set()):
        return error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
    project = match["project"]
    return Reply(200, {"name": f"projects/{project}/messages/0:{int(time.time() * 1000)}"
                               f"%{sandbox.next_id():016x}"})


def _jwt_claims(assertion: str) -> dict[str, Any] | None:
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def handle_oauth2(sandbox: Sandbox, req: Recorded) -> Reply:
    """Google's token endpoint: the signature is not checked, the grant's shape is."""
    if req.path != "/oauth2/token" or req.method != "POST":
        return Reply(404, {"error": "not_found"})
    calls = sandbox.state.setdefault("oauth2_calls", [])
    calls.append(req.at)
    sandbox.state["oauth2_token_requests"] = len(calls)
    form = req.form()
    grant = form.get("grant_type", "")
    if grant != _JWT_GRANT:
        return Reply(400, {"error": "unsupported_grant_type",
                           "error_description": f"Invalid grant_type: {grant}"})
    claims = _jwt_claims(form.get("assertion", ""))
    if claims is None or not claims.get("iss") or _FCM_SCOPE not in str(claims.get("scope", "")):
        return Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    token = f"ya29.sandbox-{sandbox.next_id()}"
    _ISSUED.setdefault(sandbox, set()).add(token)
    return Reply(200, {"access_token": token,
                       "expires_in": int(sandbox.state.get("oauth2_expires_in", 3600)),
                       "token_type": "Bearer"})


def write_service_account(path: Path | str, sandbox_url: str,
                          project_id: str = "meow-sandbox") -> Path:
    """Write a throwaway service-account JSON (fresh RSA key) whose `token_uri` is the sandbox's
    `/oauth2/token`; `path` may be a directory. Point FCM_SERVICE_ACCOUNT_FILE at the result."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    target = Path(path)
    if target.is_dir():
        target = target / "fcm-service-account.json"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = f"comms-sandbox@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": f"{sandbox_url}/oauth2/auth",
        "token_uri": f"{sandbox_url}/oauth2/token",
        "auth_provider_x509_cert_url": f"{sandbox_url}/oauth2/certs",
        "client_x509_cert_url": f"{sandbox_url}/oauth2/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    target.write_text(json.dumps(info, indent=2))
    target.chmod(0o600)
    return target
