"""Beat schedule: the drains that move parked and stranded work. Run exactly one beat."""

from __future__ import annotations

from typing import Any

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {}
