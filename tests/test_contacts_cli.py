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
                    "z@example.com,,,Mars/Base,,,,\n"
                    f"long@example.com,{'x' * 201},{'1' * 33},,,,,\n"
                    "nul@example.com,Ja\x00ne,,,,,,\n")

    code = main(["contacts", "import", str(path)])

    out = capsys.readouterr()
    assert code == 1
    assert "imported 1 contacts" in out.out and "4 records refused" in out.out
    assert "line 3: email: value is not a valid email address" in out.err
    assert "line 4: timezone: Value error, unknown IANA time zone 'Mars/Base'" in out.err
    # Longer than the columns, or with a NUL: refused per record, not a crash of the whole import.
    assert ("line 5: name: String should have at most 200 characters; "
            "phone: String should have at most 32 characters") in out.err
    assert "line 6: name: Value error, U+0000 (NUL) is not allowed in text" in out.err
    assert contacts.get("ok@example.com") is not None
    assert contacts.get("z@example.com") is None
    assert contacts.get("long@example.com") is None and contacts.get("nul@example.com") is None


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


@pytest.mark.parametrize("command", ["opt-out", "opt-in", "show"])
def test_address_that_is_not_an_email_is_refused_with_exit_2_when_given(command, capsys):
    too_long = "a" * 330 + "@example.com"
    args = ["contacts", command, too_long] + (["--channel", "sms"] if command != "show" else [])

    with pytest.raises(SystemExit) as exit_:
        main(args)

    assert exit_.value.code == 2
    assert "argument email: value is not a valid email address" in capsys.readouterr().err
    assert contacts.get(too_long) is None


def test_address_is_normalised_as_requests_are_when_opting_out():
    assert main(["contacts", "opt-out", "Jane@Example.COM", "--channel", "sms"]) == 0

    assert _contact("Jane@example.com").sms_opt_out is True
