"""Slack `chat.postMessage` as the sandbox plays it."""

from __future__ import annotations

import time

from worker.sandbox.server import Recorded, Reply, Sandbox


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    if req.path != "/slack/api/chat.postMessage" or req.method != "POST":
        return Reply(404, {"ok": False, "error": "unknown_method"})
    if not req.headers.get("authorization", "").startswith("Bearer xoxb-"):
        return Reply(200, {"ok": False, "error": "not_authed"})
    try:
        body = req.json()
    except ValueError:
        return Reply(200, {"ok": False, "error": "invalid_json"})
    if not isinstance(body, dict) or not body.get("channel"):
        return Reply(200, {"ok": False, "error": "channel_not_found"})
    if not body.get("text") and not body.get("blocks"):
        return Reply(200, {"ok": False, "error": "no_text"})
    ts = f"{int(time.time())}.{sandbox.next_id():06d}"
    return Reply(200, {"ok": True, "channel": body["channel"], "ts": ts,
                       "message": {"text": body.get("text"), "ts": ts}})
