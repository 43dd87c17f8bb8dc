"""The idempotency keys the store holds, also in memory: a start with a new key (nearly every start: the SDK
makes one per call) needs no store read.

Measured on the start path (docs/benchmarks.md §22): the store read of a key took 0.6 ms of the daemon's control
thread per ``session.start`` (SQLite re-reads pages after every commit of the writer), on the way to a session's
first output. This set answers "certainly not in the store" without it.

It never misses a key the store holds (it may hold extra ones, which only cost a store read): the set is loaded at
the daemon's start (every key within the retention period) and the writer notes each key *before* it commits it (a
failed commit leaves an extra key).
The daemon is the store's only writer of keys. Past :data:`LIMIT` keys it stops being complete and every lookup goes
to the store again, as before (bounded memory: ~100 bytes a key).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, select

from labd.store.schema import IDEMPOTENCY_RETENTION, idempotency_keys

__all__ = ["KnownKeys", "LIMIT"]

LIMIT = 20_000  # keys kept in memory (a day of starts for all but the busiest boxes)
PRUNE_MARGIN_S = 3600.0  # expired keys are dropped from memory this long after the store stops returning them


class KnownKeys:
    """Every idempotency key in the store, while :attr:`complete`; shared by the store's writer and its readers."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._keys: dict[str, float] = {}  # key -> created_at
        self._lock = threading.Lock()  # the writer (ingest thread) adds, the control thread reads
        self.complete = False  # False until loaded, and for good once the limit is passed

    def load(self, engine: Engine, now: float) -> None:
        """Read every key within the retention period (at the daemon's start, before any request)."""
        q = select(idempotency_keys.c.key, idempotency_keys.c.created_at).where(
            idempotency_keys.c.created_at >= now - IDEMPOTENCY_RETENTION).limit(self.limit + 1)
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        with self._lock:
            self._keys = {str(k): float(t) for k, t in rows}
            self.complete = len(self._keys) <= self.limit
            if not self.complete:
                self._keys = {}

    def note(self, rows: Iterable[dict[str, Any]]) -> None:
        """Keys about to be committed (``idempotency_keys`` rows): called by the writer before its commit."""
        with self._lock:
            if not self.complete:
                return
            for row in rows:
                self._keys[str(row["key"])] = float(row["created_at"])
            if len(self._keys) > self.limit:
                # Only what the store no longer returns either, with a margin: a key noted with a clock that
                # later stepped back must not be dropped while the store still holds it.
                cutoff = min(max(self._keys.values()), time.time()) - IDEMPOTENCY_RETENTION - PRUNE_MARGIN_S
                self._keys = {k: t for k, t in self._keys.items() if t >= cutoff}
                if len(self._keys) > self.limit:  # more keys within a retention period than we keep
                    self.complete, self._keys = False, {}

    def may_exist(self, key: str) -> bool:
        """False only if ``key`` is certainly not in the store; True means: read the store."""
        with self._lock:
            return not self.complete or key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
