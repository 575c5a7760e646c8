"""Jira Cloud `POST /rest/api/3/issue` as the sandbox plays it: 201 {"id", "key", "self"}.

Error shape (developer.atlassian.com/cloud/jira/platform/rest/v3/intro/#status-codes):
    {"errorMessages": [], "errors": {"summary": "You must specify a summary of the issue."}}
"""

from __future__ import annotations

import threading
from typing import Any

from worker.sandbox.server import Recorded, Reply, Sandbox

_lock = threading.Lock()


def _field_errors(fields: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    project = fields.get("project")
    if not isinstance(project, dict) or not project.get("key"):
        errors["project"] = "Specify a valid project ID or key"
    issuetype = fields.get("issuetype")
    if not isinstance(issuetype, dict) or not (issuetype.get("name") or issuetype.get("id")):
        errors["issuetype"] = "Specify an issue type"
    if not str(fields.get("summary") or "").strip():
        errors["summary"] = "You must specify a summary of the issue."
    description = fields.get("description")
    if description is not None and not (
        isinstance(description, dict)
        and description.get("type") == "doc"
        and description.get("version") == 1
        and isinstance(description.get("content"), list)
    ):
        errors["description"] = (
            "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
        )
    labels = fields.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or any(not isinstance(x, str) or " " in x for x in labels)
    ):
        errors["labels"] = "Labels cannot contain spaces."
    return errors


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    if req.path != "/jira/rest/api/3/issue" or req.method != "POST":
        return Reply(404, {"errorMessages": ["null for uri: " + req.path], "errors": {}})
    if not req.headers.get("authorization", "").startswith("Basic "):
        return Reply(
            401,
            {
                "errorMessages": [
                    "You are not authenticated. Authentication required to perform this operation."
                ],
                "errors": {},
            },
        )
    try:
        body = req.json()
    except ValueError:
        return Reply(400, {"errorMessages": ["Unexpected character in JSON body"], "errors": {}})
    fields = body.get("fields") if isinstance(body, dict) else None
    if not isinstance(fields, dict):
        return Reply(400, {"errorMessages": ["Issue must have fields"], "errors": {}})
    errors = _field_errors(fields)
    if errors:
        return Reply(400, {"errorMessages": [], "errors": errors})
    project = str(fields["project"]["key"])
    with _lock:
        counters: dict[str, int] = sandbox.state.setdefault("jira.counters", {})
        counters[project] = counters.get(project, 0) + 1
        number = counters[project]
    issue_id = str(10_000 + sandbox.next_id())
    host = req.headers.get("host", "127.0.0.1")
    key = f"{project}-{number}"
    sandbox.state.setdefault("jira.issues", {})[key] = fields
    return Reply(
        201, {"id": issue_id, "key": key, "self": f"http://{host}/jira/rest/api/3/issue/{issue_id}"}
    )
