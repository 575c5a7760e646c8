"""`comms send` and `comms demo` as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from worker.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def slack_payload(tmp_path: Path) -> Path:
    path = tmp_path / "msg.json"
    path.write_text(json.dumps({"formatted_message": "*Leeds* degraded",
                                "fallback_text": "Leeds degraded"}))
    return path


@pytest.mark.usefixtures("worker", "clean")
def test_prints_terminal_receipt_when_waiting(slack_payload, capsys, sandbox):
    mid = str(uuid.uuid4())
    code = main(["send", "--channel", "slack", "--recipient", "jane@example.com",
                 "--priority", "HIGH", "--payload", str(slack_payload), "--message-id", mid,
                 "--wait", "--timeout", "20"])

    receipt = json.loads(capsys.readouterr().out)["dispatch_receipt"]
    assert code == 0
    assert receipt["message_id"] == mid
    assert receipt["status"] == "sent"
    assert receipt["channel"] == "slack"
    assert receipt["retry_count"] == 0
    assert receipt["response_id"]
    assert len(sandbox.requests("slack")) == 1


@pytest.mark.usefixtures("worker", "clean")
def test_waiting_sends_again_a_message_the_broker_lost(slack_payload, capsys, sandbox,
                                                      monkeypatch):
    import worker.producer as producer

    lost: list[str] = []
    enqueue = producer._enqueue

    def lose_the_first(request, app):  # as a worker killed between BRPOP and its unacked record
        if not lost:
            lost.append(request["message_id"])
            return
        enqueue(request, app)

    monkeypatch.setattr(producer, "_enqueue", lose_the_first)
    mid = str(uuid.uuid4())
    code = main(["send", "--channel", "slack", "--recipient", "jane@example.com",
                 "--priority", "HIGH", "--payload", str(slack_payload), "--message-id", mid,
                 "--wait", "--timeout", "20", "--resend-after", "0.5"])

    receipt = json.loads(capsys.readouterr().out)["dispatch_receipt"]
    assert lost == [mid]
    assert code == 0
    assert receipt["message_id"] == mid
    assert receipt["status"] == "sent"
    (call,) = sandbox.requests("slack")
    assert call.json()["text"] == "Leeds degraded"


@pytest.mark.usefixtures("worker", "clean")
def test_exits_one_with_failed_receipt_when_vendor_refuses(slack_payload, capsys, sandbox):
    from worker.sandbox import Reply

    sandbox.script("slack", Reply(200, {"ok": False, "error": "is_archived"}))
    code = main(["send", "--channel", "slack", "--recipient", "jane@example.com",
                 "--priority", "HIGH", "--payload", str(slack_payload), "--wait"])

    receipt = json.loads(capsys.readouterr().out)["dispatch_receipt"]
    assert code == 1
    assert receipt["status"] == "failed"
    assert receipt["error"] == "slack:is_archived"


@pytest.mark.usefixtures("clean")
def test_exits_two_listing_problems_and_enqueues_nothing_when_invalid(tmp_path, capsys,
                                                                      redis_client):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"formatted_message": "x"}))

    code = main(["send", "--channel", "slack", "--recipient", "not-an-email",
                 "--priority", "SOON", "--payload", str(bad)])

    err = capsys.readouterr().err
    assert code == 2
    assert "the request is not valid, nothing was sent" in err
    assert "recipient: value is not a valid email address" in err
    assert "priority: Input should be 'CRITICAL', 'HIGH', 'MEDIUM' or 'LOW'" in err


def test_exits_two_when_payload_file_is_not_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")

    code = main(["send", "--channel", "slack", "--recipient", "a@example.com",
                 "--priority", "LOW", "--payload", str(bad)])

    assert code == 2
    assert "cannot read the payload" in capsys.readouterr().err


def test_demo_runs_on_embedded_defaults_when_nothing_is_configured(tmp_path):
    """The README's first command: no broker, no database, no vendor credentials configured."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMMS_", "SLACK_", "ZENDESK_", "JIRA_", "PAGERDUTY_",
                                "SENDGRID_", "TWILIO_", "FCM_"))}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "broker memory://" in out and "database sqlite:///comms.db" in out
    assert (tmp_path / "comms.db").exists()
    assert "RETRYING,RETRYING,SENT" in out
    assert "slack:channel_not_found" in out
    assert "invalid request" in out


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_refuses_a_resend_delay_that_is_not_a_positive_number(value, slack_payload, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["send", "--channel", "slack", "--recipient", "jane@example.com", "--priority",
              "HIGH", "--payload", str(slack_payload), "--wait", "--resend-after", value])

    assert exit_.value.code == 2
    assert "--resend-after" in capsys.readouterr().err
