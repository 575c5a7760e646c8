"""Settings from the environment (design.md §5), typed and validated once per process."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository's sibling `shared/vendor-specs`, where the vendors' OpenAPI documents live.
DEFAULT_VENDOR_SPECS = Path(__file__).resolve().parent.parent.parent / "shared" / "vendor-specs"


class Settings(BaseSettings):
    """Everything that varies per deployment. Field names are the environment variables."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_file=None)

    # Infrastructure
    comms_broker_url: str = "redis://localhost:6379/0"
    #: Result backend for chord receipts; empty = derived from the broker (Redis, or in-memory).
    comms_result_backend: str = ""
    comms_database_url: str = "sqlite:///comms.db"
    #: Redis visibility timeout (s), set identically for broker and result backend. Also how long a
    #: whole worker's lost messages wait in Redis before redelivery (docs/operations.md).
    comms_visibility_timeout: int = Field(default=3600, ge=10)
    #: Upper bound (s) for any Celery countdown/ETA; longer waits go to the deferral table. The
    #: bound in force is `countdown_bound`: this, but never more than a quarter of the visibility
    #: timeout, so no ETA can outlive its message's visibility (celery-notes.md §2).
    comms_max_countdown: int = Field(default=300, ge=1)
    #: Multiplies every retry-table delay; 1.0 in production, smaller in tests and the demo.
    #: A vendor's own Retry-After is never scaled.
    comms_delay_scale: float = Field(default=1.0, gt=0)
    #: Seconds added to the scheduling clock (quiet hours, due times); tests and drills only.
    comms_clock_offset: float = 0.0
    #: Seconds between beat's drains of parked and stranded work.
    comms_drain_every: float = Field(default=60.0, gt=0)
    #: Rows one drain run moves at most (also per outbox sweep).
    comms_drain_batch: int = Field(default=500, ge=1)
    #: Outbox replay: seconds with no sign of life (no state change, lease and expected retry
    #: both past) after which an unfinished dispatch is re-enqueued by the sweep.
    comms_replay_after: float = Field(default=300.0, gt=0)
    #: Replays one dispatch may get; the next stale sweep closes it FAILED ("no progress ...").
    comms_max_replays: int = Field(default=5, ge=0)
    #: Parkings of any kind (quiet hours, a vendor's long Retry-After, e-mail rounds) one dispatch
    #: may get; past it, FAILED. E-mail's own rounds are bounded lower by its max_parkings.
    comms_max_parkings: int = Field(default=10, ge=1)
    #: "inline" (the terminal receipt is written in the same transaction as the send state) or
    #: "chord" (the design card's shape: a chord callback writes it). README "Receipts".
    comms_receipt_mode: str = "inline"
    #: Inline mode: first attempts one worker process makes inside comms.dispatch, per channel,
    #: at once (a bulkhead: a hung vendor holds at most this many dispatch threads); more go to
    #: the channel's queue. 0 sends every message through its channel queue.
    comms_inline_slots: int = Field(default=8, ge=0)
    #: Seconds a claimed send may run before another attempt may take it over.
    comms_claim_lease: int = Field(default=120, ge=5)
    #: PostgreSQL connections per worker process: kept open, plus extra ones opened under load.
    #: Worker processes x (both) must stay below the server's max_connections (default 100);
    #: past it a thread waits for a free connection instead of failing (docs/operations.md).
    comms_db_pool_size: int = Field(default=10, ge=1)
    comms_db_max_overflow: int = Field(default=10, ge=0)
    #: PostgreSQL: threads accepting requests or writing receipts at the same moment share one
    #: statement and one commit (worker/store/group_commit.py). Off: one transaction each.
    comms_db_group_commit: bool = True
    #: Seconds a group-commit leader waits for more writes to join, only under load (a batch had
    #: company within the last second). A throughput/latency trade measured in docs/scaling.md.
    comms_db_group_commit_delay: float = Field(default=0.003, ge=0.0, le=0.1)
    #: HTTP timeouts (s) for every vendor call: connect, read.
    comms_http_connect_timeout: float = 5.0
    comms_http_read_timeout: float = 30.0
    #: Largest accepted request envelope, in bytes of JSON.
    comms_max_request_bytes: int = 64 * 1024
    comms_vendor_specs_dir: Path = DEFAULT_VENDOR_SPECS
    comms_webhook_base_url: str | None = None

    # Customer messaging (issue 4)
    #: From and reply-to of every e-mail: the monitored support inbox.
    comms_support_email: str = "support@meowmobile.com"
    comms_support_name: str = "Meow Mobile Support"
    #: Unsubscribe page linked from every e-mail footer;
    #: empty = {COMMS_WEBHOOK_BASE_URL}/email/unsubscribe.
    comms_unsubscribe_url: str = ""
    #: Key that signs unsubscribe links so they cannot be forged for another address.
    comms_unsubscribe_secret: SecretStr = SecretStr("change-me")
    #: Region for phone numbers given without a country code (ISO 3166 alpha-2).
    comms_default_phone_region: str = "US"

    # Slack
    slack_bot_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api"

    # Zendesk
    zendesk_subdomain: str | None = None
    zendesk_email: str | None = None
    zendesk_api_token: SecretStr | None = None
    zendesk_base_url: str | None = None

    # Jira
    jira_domain: str | None = None
    jira_email: str | None = None
    jira_api_token: SecretStr | None = None
    jira_base_url: str | None = None

    # PagerDuty
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"

    # SendGrid
    sendgrid_api_key: SecretStr | None = None
    sendgrid_api_url: str = "https://api.sendgrid.com"

    # Twilio
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_api_url: str = "https://api.twilio.com"

    # FCM
    fcm_project_id: str | None = None
    fcm_service_account_file: Path | None = None
    fcm_api_url: str = "https://fcm.googleapis.com"

    @field_validator("comms_receipt_mode")
    @classmethod
    def _known_receipt_mode(cls, value: str) -> str:
        if value not in {"chord", "inline"}:
            raise ValueError("COMMS_RECEIPT_MODE must be 'chord' or 'inline'")
        return value

    @property
    def result_backend(self) -> str:
        if self.comms_result_backend:
            return self.comms_result_backend
        if self.comms_broker_url.startswith(("redis://", "rediss://")):
            return self.comms_broker_url
        return "cache+memory://"

    @property
    def countdown_bound(self) -> float:
        """The longest countdown/ETA any code path may give Celery (s); longer waits park."""
        return float(min(self.comms_max_countdown, self.comms_visibility_timeout / 4))

    def scaled(self, seconds: float) -> float:
        """A retry-table delay after the delay scale."""
        return seconds * self.comms_delay_scale


@cache
def get_settings() -> Settings:
    """The process's settings, read once (`get_settings.cache_clear()` re-reads the environment)."""
    return Settings()
