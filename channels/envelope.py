"""The request envelope (design.md §2) and one payload model per channel.

These models are the public contract for producers; `comms schemas` prints them as JSON Schema
and docs/schemas/ holds the published copies. Unknown fields are refused so a typo is an error,
not a silently dropped field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

ChannelName = Literal["slack", "zendesk", "jira", "pagerduty", "email", "sms", "push"]
Priority = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW"]

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Label = Annotated[str, StringConstraints(pattern=r"^\S{1,255}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlackPayload(_Strict):
    formatted_message: Annotated[Text, Field(max_length=3000)]
    """mrkdwn text of the section block (Slack caps a section's text at 3,000 characters)."""
    fallback_text: Annotated[Text, Field(max_length=4000)]
    target_channel_id: Annotated[Text, Field(max_length=80)] | None = None


class ZendeskCreatePayload(_Strict):
    subject: Annotated[Text, Field(max_length=255)]
    body: Annotated[Text, Field(max_length=65_000)]
    tags: list[Tag] = []
    group_id: int | None = None


class ZendeskNotePayload(_Strict):
    ticket_id: int = Field(gt=0)
    note_body: Annotated[Text, Field(max_length=65_000)]
    new_tags: list[Tag] = []


class JiraPayload(_Strict):
    project_key: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{1,9}$")]
    issue_type: Annotated[Text, Field(max_length=60)]
    summary: Annotated[Text, Field(max_length=255)]
    description: Annotated[Text, Field(max_length=32_000)]
    labels: list[Label] = []


class PagerDutyPayload(_Strict):
    summary: Annotated[Text, Field(max_length=1024)]
    severity: Literal["critical", "error", "warning", "info"] | None = None
    service: Annotated[Text, Field(max_length=80)] | None = None
    custom_details: dict[str, Any] = {}
    zendesk_ticket_url: AnyHttpUrl | None = None


class EmailPayload(_Strict):
    subject: Annotated[Text, Field(max_length=998)]
    plain_text_body: Annotated[Text, Field(max_length=500_000)] | None = None
    html_body: Annotated[Text, Field(max_length=500_000)] | None = None
    customer_name: Annotated[Text, Field(max_length=200)] | None = None

    @model_validator(mode="after")
    def _one_body(self) -> EmailPayload:
        if self.plain_text_body is None and self.html_body is None:
            raise ValueError("at least one of plain_text_body or html_body is required")
        return self


class SmsPayload(_Strict):
    sms_body: Annotated[Text, Field(max_length=1600)]
    customer_phone: Annotated[Text, Field(max_length=32)] | None = None


class PushPayload(_Strict):
    push_title: Annotated[Text, Field(max_length=200)]
    push_body: Annotated[Text, Field(max_length=1000)]
    deep_link_url: Annotated[Text, Field(max_length=2000)] | None = None
    device_fcm_token: Annotated[Text, Field(max_length=4096)] | None = None


#: channel -> the payload models it accepts, tried in order.
PAYLOAD_MODELS: dict[str, tuple[type[BaseModel], ...]] = {
    "slack": (SlackPayload,),
    "zendesk": (ZendeskCreatePayload, ZendeskNotePayload),
    "jira": (JiraPayload,),
    "pagerduty": (PagerDutyPayload,),
    "email": (EmailPayload,),
    "sms": (SmsPayload,),
    "push": (PushPayload,),
}


def iana_zone(value: str | None) -> str | None:
    """`value` if it names an IANA time zone (None passes); ValueError otherwise."""
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


class Customer(_Strict):
    name: Annotated[Text, Field(max_length=200)] | None = None
    phone: Annotated[Text, Field(max_length=32)] | None = None
    timezone: str | None = None
    fcm_token: Annotated[Text, Field(max_length=4096)] | None = None

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str | None) -> str | None:
        return iana_zone(value)


class DispatchRequest(_Strict):
    """The seed's input envelope plus the optional fields of design.md §2."""

    recipient: EmailStr
    channel: ChannelName
    #: Validated against the channel's model (PAYLOAD_MODELS) after the envelope itself.
    message_payload: dict[str, Any]
    priority: Priority
    message_id: UUID | None = None
    signal_type: Annotated[Text, Field(max_length=100)] | None = None
    severity: Annotated[Text, Field(max_length=40)] | None = None
    customer: Customer | None = None
    #: Set on fallback dispatches: the message whose failure started this one.
    parent_message_id: UUID | None = None

    _payload: BaseModel

    @model_validator(mode="after")
    def _payload_for_channel(self) -> DispatchRequest:
        models = PAYLOAD_MODELS[self.channel]
        failures: list[ValidationError] = []
        for model in models:
            try:
                self._payload = model.model_validate(self.message_payload)
                return self
            except ValidationError as exc:
                failures.append(exc)
        # Report the errors of the model the payload came closest to.
        best = min(failures, key=lambda e: e.error_count())
        raise ValueError(
            "message_payload is not a valid "
            + " or ".join(m.__name__ for m in models)
            + ": "
            + "; ".join(_describe(best))
        )

    @property
    def payload(self) -> BaseModel:
        """message_payload as its channel's model."""
        return self._payload


class InvalidRequest(ValueError):
    """A request the dispatcher refuses; `problems` are one human-readable line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid request: " + "; ".join(problems))


#: Why a text with a NUL is refused (PostgreSQL cannot store U+0000 in text).
NUL_REFUSED = "U+0000 (NUL) is not allowed in text"
#: Objects and arrays inside each other, at most (PagerDuty's custom_details is free JSON).
MAX_NESTING = 32


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest in `value` more than `limit` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


def _nul_paths(value: Any, where: str = "") -> list[str]:
    """Where a NUL character hides in a JSON value (in a string or a key), as field paths."""
    if isinstance(value, str):
        return [where or "request"] if "\x00" in value else []
    if isinstance(value, dict):
        found = [f"{where}.{key!r}" if where else repr(key) for key in value
                 if isinstance(key, str) and "\x00" in key]
        for key, item in value.items():
            found += _nul_paths(item, f"{where}.{key}" if where else str(key))
        return found
    if isinstance(value, list):
        return [path for i, item in enumerate(value) for path in _nul_paths(item, f"{where}.{i}")]
    return []


def _describe(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "request"
        lines.append(f"{where}: {item['msg']}")
    return lines


def parse_request(data: Any, *, max_bytes: int) -> DispatchRequest:
    """The request as a DispatchRequest, or InvalidRequest saying what is wrong with it."""
    if not isinstance(data, dict):
        raise InvalidRequest([f"request must be a JSON object, not {type(data).__name__}"])
    if _deeper_than(data, MAX_NESTING):
        # Checked first, without recursion: deep enough, json.dumps and the checks below would
        # raise RecursionError, and the request would be lost instead of refused.
        raise InvalidRequest([f"request is nested deeper than {MAX_NESTING} levels"])
    dumped = json.dumps(data, default=str)
    size = len(dumped.encode())
    if size > max_bytes:
        raise InvalidRequest([f"request is {size} bytes; the limit is {max_bytes}"])
    if "\\u0000" in dumped and (nuls := _nul_paths(data)):
        # PostgreSQL cannot store U+0000 in text, and no vendor wants it in a message.
        raise InvalidRequest([f"{where}: {NUL_REFUSED}" for where in nuls])
    try:
        return DispatchRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
