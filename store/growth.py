"""Which sessions' records may have grown since the last look: for the readers that follow the whole store (the
search indexer, the OpenTelemetry exporter) without reading every session's row every second.

A record grows only while its session is live, or when it ends (and again when it is resumed: live again). So a
look reads every session once a :data:`FULL_SCAN_EVERY` (and the first time), and in between only the sessions
that are live or ended since the previous look began (:data:`ENDED_SLACK` before it: an end committed while that
look read). A daemon that has kept 100,000 sessions would otherwise read every row every second.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select

from labd.ipc.events import STATUSES, TERMINAL_STATUSES
from labd.store.schema import sessions

__all__ = ["ENDED_SLACK", "FULL_SCAN_EVERY", "GrowthScan", "LIVE"]

LIVE = tuple(s for s in STATUSES if s not in TERMINAL_STATUSES)
#: seconds between looks that read every session
FULL_SCAN_EVERY = 60.0
#: seconds: a session that ended just before the previous look read the sessions is read once more
ENDED_SLACK = 5.0


class GrowthScan:
    """One reader's looks at the sessions table (not thread-safe: the reader's thread only)."""

    def __init__(self) -> None:
        self.full_at = 0.0  # monotonic time of the last look that read every session (0: the next one does)
        self._since = 0.0  # wall time the previous look began

    def due(self) -> bool:
        """Whether the next look reads every session."""
        return time.monotonic() - self.full_at >= FULL_SCAN_EVERY

    def again(self) -> None:
        """Make the next look read every session (the reader left some of this one's for later)."""
        self.full_at = 0.0

    def read(self, conn: Any, *columns: Any, also: Collection[str] = ()) -> tuple[list[Any], bool]:
        """``(rows of columns of sessions table, whether they are every session)``: every session when due, else the
        live ones, those ended since the previous look, and those in ``also`` (the reader's own leftovers)."""
        now, wall = time.monotonic(), time.time()
        full = now - self.full_at >= FULL_SCAN_EVERY
        query = select(*columns)
        if not full:
            grown = [sessions.c.status.in_(LIVE), sessions.c.ended_at >= self._since - ENDED_SLACK]
            if also:
                grown.append(sessions.c.id.in_(sorted(also)))
            query = query.where(or_(*grown))
        rows = list(conn.execute(query).all())
        if full:
            self.full_at = now
        self._since = wall
        return rows, full
