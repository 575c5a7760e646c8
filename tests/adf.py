"""Atlassian Document Format checks shared by the Jira tests.

Atlassian publishes ADF's JSON Schema in the npm package `@atlaskit/adf-schema`
(`dist/json-schema/v1/full.json`); `.ci/run` fetches it and sets COMMS_ADF_SCHEMA. Without it the
schema check is skipped with ADF_SCHEMA_HINT; the strict structural check always runs.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

# No stubs in the dev extras (types-jsonschema).
import jsonschema  # type: ignore[import-untyped]
import pytest

ROOT = Path(__file__).resolve().parents[1]
ADF_SCHEMA_IN_PACKAGE = Path("node_modules/@atlaskit/adf-schema/dist/json-schema/v1/full.json")
#: Where .ci/run unpacks the npm package.
ADF_SCHEMA_IN_CACHE = Path(".cache/package/dist/json-schema/v1/full.json")
ADF_SCHEMA_HINT = (
    "npm pack @atlaskit/adf-schema@57.7.22 && tar -xzf atlaskit-adf-schema-57.7.22.tgz"
    " package/dist/json-schema/v1/full.json && export"
    " COMMS_ADF_SCHEMA=$PWD/package/dist/json-schema/v1/full.json"
)
BREAK = {"type": "hardBreak"}


def assert_adf_structure(doc: Any) -> None:
    """A strict check of the ADF subset to_adf emits: doc > paragraph > (text | hardBreak)."""
    assert isinstance(doc, dict) and set(doc) == {"type", "version", "content"}
    assert doc["type"] == "doc" and doc["version"] == 1
    assert isinstance(doc["content"], list)
    for para in doc["content"]:
        assert set(para) == {"type", "content"} and para["type"] == "paragraph"
        assert isinstance(para["content"], list) and para["content"]
        for node in para["content"]:
            if node["type"] == "text":
                assert set(node) == {"type", "text"}
                assert isinstance(node["text"], str) and node["text"]
                assert "\n" not in node["text"]
            else:
                assert node == BREAK


@cache
def adf_validator() -> jsonschema.Draft4Validator | None:
    candidates = (os.environ.get("COMMS_ADF_SCHEMA"), ROOT / ADF_SCHEMA_IN_CACHE,
                  ROOT / ADF_SCHEMA_IN_PACKAGE)
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            schema = json.loads(Path(candidate).read_text())
            # The schema declares draft-04 ("$schema": "http://json-schema.org/draft-04/schema#").
            return jsonschema.Draft4Validator(schema)
    return None


def require_adf_validator() -> jsonschema.Draft4Validator:
    validator = adf_validator()
    if validator is None:
        pytest.skip(
            f"@atlaskit/adf-schema full.json not found (COMMS_ADF_SCHEMA or "
            f"{ADF_SCHEMA_IN_PACKAGE}); get it with: {ADF_SCHEMA_HINT}"
        )
    return validator


def assert_valid_adf(doc: Any) -> None:
    """Structure always; Atlassian's schema too where it is installed."""
    assert_adf_structure(doc)
    validator = adf_validator()
    if validator is not None:
        validator.validate(doc)
