"""Base URLs of per-tenant vendors: Zendesk `{sub}.zendesk.com`, Jira `{site}.atlassian.net`.

The tenant name is spliced into a hostname, so it must be exactly one DNS label: a value such as
`evil.com/x`, `a@b` or `acme.attacker.net` would otherwise send our credentials to another host.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from channels.base import ChannelConfigError, require

#: One hostname label (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
HOSTNAME_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def tenant_base_url(
    override: str | None, override_var: str, tenant: str | None, tenant_var: str, template: str
) -> str:
    """`override` (a full URL, for sandboxes and proxies) when set, else `template` filled with
    the validated tenant label; raises ChannelConfigError naming the variable at fault."""
    if override:
        parts = urlsplit(override)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
        ):
            raise ChannelConfigError(
                f"{override_var} must be an http(s) URL without query or fragment, got {override!r}"
            )
        return override.rstrip("/")
    label = require(tenant, tenant_var)
    if not HOSTNAME_LABEL.fullmatch(label):
        raise ChannelConfigError(
            f"{tenant_var} must be a single hostname label (letters, digits and hyphens, no dots,"
            f" slashes, '@', ':' or spaces), got {label[:80]!r}"
        )
    return template.format(label.lower())
