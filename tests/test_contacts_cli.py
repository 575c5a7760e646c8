"""`comms contacts`: import (CSV and JSON, large files in batches, bad records reported), show,
opt-out and opt-in, against the real database."""

from __future__ import annotations

import json

import pytest

from channels.contacts import Contact
from worker.cli import main
from worker.store import contacts

pytestmark = pytest.mark.usefixtures("clean")

HEADER = "email,name,phone,timezone,sms_opt_out,push_enabled,email_unsubscribed,fcm_tokens\n"


def _contact(email: str) -> Contact:
    found = contacts.get(email)
    assert found is not None
    return found


def test_imports_every_valid_row_in_batches_when_file_is_large(tmp_path, capsys):
    path = tmp_path / "people.csv"
    rows = [f"c{i}@example.com,Customer {i},+1415555{i:04d},Europe/London,false,true,false,"
            f"tok-{i}\n" for i in range(5000)]
    path.write_text(HEADER + "".join(rows))

    code = main(["contacts", "import", str(path), "--batch", "700"])

    assert code == 0
    assert "imported 5000 contacts" in capsys.readouterr().out
    last = contacts.get("c4999@example.com")
    assert last is not None
    assert (last.name, last.phone, last.timezone, last.fcm_tokens) == (
        "Customer 4999", "+14155554999", "Europe/London", ("tok-4999",))


def test_bad_records_reported_with_line_and_skipped_when_invalid(tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_text(HEADER + "ok@example.com,,,,,,,\nnot-an-email,,,,,,,\n"
                    "z@example.com,,,Mars/Base,,,,\n")

    code = main(["contacts", "import", str(path)])

    out = capsys.readouterr()
    assert code == 1
    assert "imported 1 contacts" in out.out and "2 records refused" in out.out
    assert "line 3: email: value is not a valid email address" in out.err
    assert "line 4: timezone: Value error, unknown IANA time zone 'Mars/Base'" in out.err
    assert contacts.get("ok@example.com") is not None
    assert contacts.get("z@example.com") is None


def test_json_lines_import_keeps_stored_consent_when_fields_absent(tmp_path):
    contacts.set_flags("a@example.com", sms_opt_out=True)
    path = tmp_path / "people.jsonl"
    path.write_text(json.dumps({"email": "a@example.com", "phone": "+14155550100",
                                "fcm_tokens": ["t1"]}) + "\n")

    assert main(["contacts", "import", str(path)]) == 0

    found = contacts.get("a@example.com")
    assert found is not None
    assert found.sms_opt_out is True and found.phone == "+14155550100"


def test_opt_out_then_opt_in_when_asked_per_channel(capsys):
    assert main(["contacts", "opt-out", "b@example.com", "--channel", "push"]) == 0
    assert _contact("b@example.com").push_enabled is False
    assert main(["contacts", "opt-in", "b@example.com", "--channel", "push"]) == 0
    assert _contact("b@example.com").push_enabled is True
    assert main(["contacts", "show", "b@example.com"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 2)[-1])["push_enabled"] is True


def test_unknown_contact_exits_non_zero_when_shown(capsys):
    assert main(["contacts", "show", "nobody@example.com"]) == 1
    assert "no contact nobody@example.com" in capsys.readouterr().err
