"""Configuration: settings from the environment and the data tables the product runs on.

`settings` holds what varies per deployment (URLs, credentials, timeouts); `policies`,
`routing` and `priorities` load the data files beside this module (retry table, routing
rules, priority mappings), validated once at import.
"""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
