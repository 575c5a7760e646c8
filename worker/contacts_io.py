"""Reading contact files for `comms contacts import`: CSV (header row) or JSON (an array, or one
object per line). Each record is validated; a bad record is reported with its line, not imported."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from channels.envelope import NUL_REFUSED, iana_zone
from worker.store.contacts import ImportRow

CSV_COLUMNS = ("email", "name", "phone", "timezone", "sms_opt_out", "push_enabled",
               "email_unsubscribed", "fcm_tokens")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(NUL_REFUSED)
    return value


# Text the contacts tables can hold: no longer than the column, no NUL (PostgreSQL refuses it).
Name = Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_nul)]
Phone = Annotated[str, StringConstraints(max_length=32), AfterValidator(_no_nul)]
Token = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_no_nul)]


class ContactRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    name: Name | None = None
    phone: Phone | None = None
    timezone: str | None = None
    sms_opt_out: bool | None = None
    push_enabled: bool | None = None
    email_unsubscribed: bool | None = None
    #: In CSV: tokens separated by ";".
    fcm_tokens: list[Token] = []

    @field_validator("name", "phone", "timezone", "sms_opt_out", "push_enabled",
                     "email_unsubscribed", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return iana_zone(value)

    @field_validator("fcm_tokens", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(";") if t.strip()]
        return value

    def row(self) -> ImportRow:
        data = self.model_dump()
        data["fcm_tokens"] = tuple(data["fcm_tokens"])
        return ImportRow(**data)


@dataclass(frozen=True, slots=True)
class BadRecord:
    line: int
    problem: str


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(fh)
            unknown = set(reader.fieldnames or ()) - set(CSV_COLUMNS)
            if unknown or "email" not in (reader.fieldnames or ()):
                raise ValueError(f"CSV header must name 'email' and only {', '.join(CSV_COLUMNS)};"
                                 f" unknown: {sorted(unknown)}")
            for record in reader:
                yield reader.line_num, record
            return
        first = fh.read(1)
        fh.seek(0)
        if first == "[":
            yield from enumerate(json.load(fh), start=1)
            return
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, json.loads(line)


def read_contacts(path: Path) -> Iterator[ImportRow | BadRecord]:
    """Each record of the file, validated: an ImportRow, or a BadRecord saying what is wrong."""
    for line, raw in _records(path):
        try:
            yield ContactRecord.model_validate(raw).row()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            yield BadRecord(line, problems)


def count_records(path: Path) -> int:
    """Records in the file (for the progress bar), without validating them."""
    return sum(1 for _ in _records(path))
