"""Rate-limited warnings: a flood of bad input must not become a flood of log lines.

Each (message, reason) is logged at most once per :data:`WARN_EVERY_S`; the next line that gets through
says how many were not logged meanwhile. Counters (``labd status --json``) keep the exact numbers.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["WarnLimiter", "WARN_EVERY_S"]

WARN_EVERY_S = 1.0


class WarnLimiter:
    """Wraps a structlog logger's ``warning`` for one thread (the daemon's main loop)."""

    def __init__(self, log: Any, every: float = WARN_EVERY_S) -> None:
        self.log = log
        self.every = every
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, what: str, reason: str, **fields: Any) -> None:
        key = (what, reason)
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self._seen[key] = (last, suppressed + 1)
            return
        if len(self._seen) > 1000:  # reasons are a short fixed list; bound it anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        if suppressed:
            fields["not_logged_since_last"] = suppressed
        self.log.warning(what, reason=reason, **fields)
