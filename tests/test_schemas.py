"""The published JSON Schemas in docs/schemas are the ones the code validates with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def test_published_schemas_match_models_when_regenerated(tmp_path, capsys):
    assert main(["schemas", "--out", str(tmp_path)]) == 0
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in DOCS.iterdir()), (
        "run: comms schemas --out docs/schemas"
    )
    for name in generated:
        assert json.loads((tmp_path / name).read_text()) == json.loads((DOCS / name).read_text()), (
            f"docs/schemas/{name} is stale: run comms schemas --out docs/schemas"
        )


@pytest.mark.parametrize(
    "channel", ["slack", "zendesk", "jira", "pagerduty", "email", "sms", "push"]
)
def test_every_channel_has_a_published_schema(channel):
    assert (DOCS / f"{channel}.schema.json").is_file()
