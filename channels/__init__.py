"""One adapter per vendor. Pure: no Celery, no database (house-style.md).

`get_channel(name, settings)` is the registry the task layer uses.
"""

from __future__ import annotations

from collections.abc import Callable

from channels.base import Channel
from channels.fcm import FcmChannel
from channels.jira import JiraChannel
from channels.pagerduty import PagerDutyChannel
from channels.sendgrid import SendGridChannel
from channels.slack import SlackChannel
from channels.twilio import TwilioChannel
from channels.zendesk import ZendeskChannel
from config.settings import Settings

#: channel name -> factory. Each later channel adds itself here.
REGISTRY: dict[str, Callable[[Settings], Channel]] = {
    "slack": SlackChannel,
    "email": SendGridChannel,
    "sms": TwilioChannel,
    "push": FcmChannel,
    "zendesk": ZendeskChannel,
    "jira": JiraChannel,
    "pagerduty": PagerDutyChannel,
}


def get_channel(name: str, settings: Settings) -> Channel:
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise LookupError(f"no adapter for channel {name!r}") from None
    return factory(settings)
