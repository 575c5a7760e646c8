"""`comms demo`: the whole pipeline in one process on a bare machine.

In-process broker (unless COMMS_BROKER_URL is set), SQLite (unless COMMS_DATABASE_URL is set), the
vendor sandbox on 127.0.0.1, and a real Celery worker on threads. It dispatches a handful of
messages, some scripted to retry or fail, and prints their receipts.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from typing import Any

#: Retry-table delays are shortened 10x so the demo finishes in seconds; Retry-After is not.
DEMO_DELAY_SCALE = "0.1"


def _prepare_environment(sandbox_env: dict[str, str]) -> None:
    os.environ.setdefault("COMMS_BROKER_URL", "memory://localhost//")
    os.environ.setdefault("COMMS_DATABASE_URL", "sqlite:///comms.db")
    os.environ.setdefault("COMMS_DELAY_SCALE", DEMO_DELAY_SCALE)
    os.environ.setdefault("COMMS_WEBHOOK_BASE_URL", "https://hooks.example.test")
    # The demo never reaches a real vendor: every vendor URL and credential is the sandbox's.
    os.environ.update(sandbox_env)


def _slack(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "recipient": "jane@example.com",
        "channel": "slack",
        "priority": "HIGH",
        "message_id": str(uuid.uuid4()),
        "signal_type": "network_outage",
        "severity": "major",
        "message_payload": {"formatted_message": f"*{text}*", "fallback_text": text},
        **extra,
    }


def _request(channel: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    recipient = extra.pop("recipient", "jane@example.com")
    return {"recipient": recipient, "channel": channel, "priority": "CRITICAL",
            "message_id": str(uuid.uuid4()), "signal_type": "data_outage", "severity": "major",
            "message_payload": payload, **extra}


def _night_zone() -> str:
    """A fixed-offset zone where it is 03:00-ish now, so a non-critical SMS is deferred."""
    hour = datetime.now(UTC).hour
    offset = (3 - hour + 12) % 24 - 12  # local = UTC + offset
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"


def scenarios(sandbox: Any) -> list[tuple[str, dict[str, Any]]]:
    """(what it shows, request) pairs, with the sandbox scripted to play each one."""
    from worker.sandbox import Reply
    from worker.sandbox.vendors import transient_error

    busy = Reply(503, {"ok": False, "error": "service_unavailable"})
    sandbox.script("slack", busy, busy, contains="flaky")
    sandbox.script(
        "slack",
        Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}),
        contains="throttled",
    )
    sandbox.script(
        "slack", Reply(200, {"ok": False, "error": "channel_not_found"}), contains="nowhere"
    )
    sandbox.script("pagerduty", transient_error("pagerduty"), repeat=True, contains="core down")
    sandbox.state["twilio_opted_out"] = {"+14155550199"}
    duplicate = _slack("Sent twice by its producer, dispatched once")
    phone = {"phone": "+14155550123", "timezone": "Europe/London", "fcm_token": "demo-token"}
    return [
        ("zendesk ticket", _request("zendesk", {"subject": "Data outage", "body": "Details"})),
        ("jira issue (ADF description)", _request("jira", {
            "project_key": "OPS", "issue_type": "Incident", "summary": "Leeds outage",
            "description": "What happened\n\nWhat we did"})),
        ("pagerduty down 6x -> slack @oncall", _request("pagerduty", {"summary": "core down"})),
        ("e-mail", _request("email", {"subject": "Service degraded",
                                      "plain_text_body": "We are on it."}, customer=phone)),
        ("sms", _request("sms", {"sms_body": "Data degraded nearby"}, customer=phone)),
        ("sms opted out at twilio -> e-mail", _request(
            "sms", {"sms_body": "Data degraded"}, recipient="sam@example.com",
            customer={"phone": "+14155550199"})),
        ("sms at 03:00 local, not critical", _request(
            "sms", {"sms_body": "Data degraded"}, priority="HIGH", recipient="nina@example.com",
            customer={"phone": "+14155550123", "timezone": _night_zone()})),
        ("push", _request("push", {"push_title": "Degraded", "push_body": "We are on it"},
                          customer=phone)),
        ("delivered first time", _slack("Leeds data service degraded")),
        ("two 503s, then delivered", _slack("flaky vendor")),
        ("429 Retry-After: 1, then delivered", _slack("throttled vendor")),
        ("permanent error, not retried", _slack("nowhere", message_id=str(uuid.uuid4()))),
        ("same message_id twice", duplicate),
        ("same message_id twice (repeat)", duplicate),
        ("invalid request", {**_slack("bad"), "channel": "fax"}),
    ]


def run_demo() -> int:
    from worker.sandbox import Sandbox
    from worker.sandbox.vendors.fcm import write_service_account

    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as keys:
        _prepare_environment(sandbox.env())
        os.environ["FCM_SERVICE_ACCOUNT_FILE"] = str(write_service_account(keys, sandbox.url))
        from config.settings import get_settings

        get_settings.cache_clear()
        from celery.contrib.testing.worker import start_worker

        from worker.celery_app import app
        from worker.store.db import get_engine

        settings = get_settings()
        get_engine()
        print(
            f"broker {settings.comms_broker_url}  database {settings.comms_database_url}  "
            f"vendors {sandbox.url} (sandbox)  delay scale {settings.comms_delay_scale}"
        )
        plan = scenarios(sandbox)
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=10,
            hostname="demo@localhost",
        ):
            for _, request in plan:
                app.send_task("comms.dispatch", kwargs={"request": request})
            receipts = _collect([r["message_id"] for _, r in plan], timeout=90)
            fallbacks = _fallback_rows(plan)
            receipts.update(_collect([r["message_id"] for _, r in fallbacks], timeout=30))
        _print_table(plan + fallbacks, receipts, len(sandbox.requests()))
    missing = [r for r in receipts.values() if r is None]
    return 1 if missing else 0


def _collect(message_ids: list[str], timeout: float) -> dict[str, dict[str, Any] | None]:
    """Each message's terminal row, or its DEFERRED row when it is parked for later."""
    from worker.store import dispatches as store

    def settled(mid: str) -> dict[str, Any] | None:
        rows = store.log_rows(uuid.UUID(mid))
        done = [r for r in rows if r["outcome"] in ("SENT", "FAILED", "SUPPRESSED")]
        if done:
            return done[0]
        return rows[-1] if rows and rows[-1]["outcome"] == "DEFERRED" else None

    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(message_ids)
    while time.monotonic() < deadline and any(v is None for v in found.values()):
        for mid in message_ids:
            if found[mid] is None:
                found[mid] = settled(mid)
        time.sleep(0.2)
    return found


def _print_table(
    plan: list[tuple[str, dict[str, Any]]], receipts: dict[str, Any], vendor_calls: int
) -> None:
    from worker.store import dispatches as store

    header = (
        f"{'scenario':36} {'message':9} {'channel':8} {'outcome':10} {'retries':7} "
        f"{'comms_log rows':24} response_id / error"
    )
    print(header)
    print("-" * len(header))
    for what, request in plan:
        mid = request["message_id"]
        row = receipts.get(mid)
        rows = store.log_rows(uuid.UUID(mid))
        trail = ",".join(r["outcome"] for r in rows).replace("RETRYING,RETRYING,RETRYING,"
                                                              "RETRYING,RETRYING", "RETRYING x5")
        if row is None:
            print(f"{what:36} {mid[:8]:9} {request['channel']:8} {'(none)':10}")
            continue
        detail = row["response_id"] or (row["error"] or "")[:60]
        print(
            f"{what:36} {mid[:8]:9} {row['channel']:8} {row['outcome']:10} "
            f"{row['retry_count']:<7} {trail:24} {detail}"
        )
    print(f"\nvendor calls at the sandbox: {vendor_calls}")


def _fallback_rows(plan: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The fallback dispatches the plan's failures started (waiting briefly for each)."""
    from tasks.dispatch import derived_id
    from worker.store import dispatches as store

    rows = []
    for _, request in plan:
        outcomes = [r["outcome"] for r in store.log_rows(uuid.UUID(request["message_id"]))]
        if "FAILED" not in outcomes and "SUPPRESSED" not in outcomes:
            continue
        child = derived_id(request["message_id"], "fallback")
        deadline = time.monotonic() + 5
        found = store.get_dispatch(uuid.UUID(child))
        while found is None and time.monotonic() < deadline:
            time.sleep(0.1)
            found = store.get_dispatch(uuid.UUID(child))
        if found is not None:
            rows.append((f"  fallback of {request['message_id'][:8]}",
                         {"message_id": child, "channel": found["channel"]}))
    return rows
