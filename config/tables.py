"""The data tables beside this module, loaded and validated once:
retry policies, routing, priorities."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

HERE = Path(__file__).resolve().parent

CHANNELS = ("slack", "zendesk", "jira", "pagerduty", "email", "sms", "push")
PRIORITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryPolicy(_Frozen):
    max_retries: int = Field(ge=0)
    #: Seconds before retry 1, 2, ...; the last repeats.
    delays: tuple[float, ...] = Field(min_length=1)
    on_final_failure: Literal["log", "fallback", "park"]
    park_after_minutes: int | None = None
    max_parkings: int | None = None

    @model_validator(mode="after")
    def _park_fields(self) -> RetryPolicy:
        if self.on_final_failure == "park" and not (self.park_after_minutes and self.max_parkings):
            raise ValueError("a 'park' policy needs park_after_minutes and max_parkings")
        return self

    def delay(self, retries_done: int) -> float:
        """Seconds (unscaled) before the next retry, after `retries_done` retries."""
        return self.delays[min(retries_done, len(self.delays) - 1)]


class SlackRule(_Frozen):
    channel: str
    signal_type: str | None = None
    severity: str | None = None

    def matches(self, signal_type: str | None, severity: str | None) -> bool:
        def same(want: str | None, have: str | None) -> bool:
            return want is None or (have is not None and want.lower() == have.lower())

        return same(self.signal_type, signal_type) and same(self.severity, severity)


class SlackTarget(_Frozen):
    channel: str
    mention: str | None = None


class SlackRouting(_Frozen):
    default_channel: str
    rules: tuple[SlackRule, ...] = ()
    oncall: SlackTarget
    review: SlackTarget

    def channel_for(self, signal_type: str | None, severity: str | None) -> str:
        for rule in self.rules:
            if rule.matches(signal_type, severity):
                return rule.channel
        return self.default_channel


class PagerDutyRouting(_Frozen):
    #: service -> name of the environment variable holding its routing key.
    services: dict[str, str] = {}


class Routing(_Frozen):
    slack: SlackRouting
    pagerduty: PagerDutyRouting = PagerDutyRouting()


class PriorityMap(_Frozen):
    CRITICAL: str
    HIGH: str
    MEDIUM: str
    LOW: str

    def __getitem__(self, priority: str) -> str:
        return str(getattr(self, priority))


class Priorities(_Frozen):
    zendesk: PriorityMap
    jira: PriorityMap
    pagerduty: PriorityMap


def _load(path: Path) -> dict[str, object]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


@cache
def policies() -> dict[str, RetryPolicy]:
    raw = _load(HERE / "retry_policies.toml")
    table = {name: RetryPolicy.model_validate(row) for name, row in raw.items()}
    missing = set(CHANNELS) - set(table)
    if missing:
        raise ValueError(f"retry_policies.toml lacks channels: {sorted(missing)}")
    return table


@cache
def routing(path: Path | None = None) -> Routing:
    return Routing.model_validate(_load(path or HERE / "routing.toml"))


@cache
def priorities() -> Priorities:
    return Priorities.model_validate(_load(HERE / "priorities.toml"))
