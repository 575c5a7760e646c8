"""Tenant names that must never be spliced into a vendor hostname (channels/tenant.py)."""

#: id -> value; each would move the request (and our credentials) to another host, or is no label.
HOSTILE_LABELS = {
    "slash": "evil.com/x",
    "at": "a@b",
    "space": "x y",
    "dot": "a.b",
    "empty": "",
    "fqdn": "acme.atlassian.net",
    "port": "acme:443",
    "lead-hyphen": "-acme",
    "trail-hyphen": "acme-",
    "newline": "acme\n",
    "too-long": "a" * 64,
    "non-ascii": "\u00e9vil",
    "dotdot": "acme/../x",
    "fragment": "acme#",
    "query": "acme?x=1",
}
