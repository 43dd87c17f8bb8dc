"""The OpenTelemetry exporter's cursor: per session, the last seq whose spans the collector acknowledged.

Kept in ``<home>/otel-export.db``, an SQLite file of the exporter's own (only the store's single writer writes the
store), one row per session, each batch's move committed on its own. Every session keeps its row for as long as
the store keeps the session: a session resumed days after it ended goes on from where its export stopped. (Until
2026-12-07 the cursor was a JSON file that forgot a session once it had ended and was exported, and found sessions
by creation time: a resumed session's second run was never exported.) A row whose session the store no longer
has is dropped at the exporter's full scans.

A cursor file of the older form (``otel-export.json``: ``done_before`` and the sessions after it) is taken over
once: every session created before ``done_before`` counts as exported up to its ``last_seq`` of then, the others
up to their seq in the file; the file is then renamed ``otel-export.json.migrated``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, select

from labd.store.schema import sessions

__all__ = ["ExportCursor"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS cursor (session_id TEXT PRIMARY KEY, seq INTEGER NOT NULL)"


class ExportCursor:
    """Per-session export marks, durable (each :meth:`move` is committed) and read from memory."""

    def __init__(self, path: Path, engine: Engine, legacy: Path | None = None) -> None:
        """Raises ``sqlite3.Error`` or ``OSError`` when the file can be neither opened nor made anew."""
        self.path = path
        self.log = structlog.get_logger("labd.otel")
        self._lock = threading.Lock()
        self._db = self._open(path)
        self._marks: dict[str, int] = dict(self._db.execute("SELECT session_id, seq FROM cursor").fetchall())
        if legacy is not None and legacy.exists():
            self._take_over(legacy, engine)

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, check_same_thread=False)
            db.execute(_SCHEMA)
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.DatabaseError as exc:  # damaged: kept aside; export starts over (nothing lost, some twice)
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            os.replace(path, aside)
            self.log.error("telemetry cursor damaged; every session will be exported again", error=str(exc),
                           kept=str(aside))
            db = sqlite3.connect(path, check_same_thread=False)
            db.execute(_SCHEMA)
            return db

    def get(self, sid: str) -> int:
        return self._marks.get(sid, 0)

    def move(self, sid: str, seq: int) -> None:
        """The collector acknowledged every span of ``sid`` up to ``seq``: committed before this returns."""
        if self._marks.get(sid) == seq:
            return
        with self._lock, self._db:
            self._db.execute("INSERT INTO cursor (session_id, seq) VALUES (?, ?) ON CONFLICT(session_id) "
                             "DO UPDATE SET seq = excluded.seq", (sid, seq))
        self._marks[sid] = seq

    def known(self) -> set[str]:
        return set(self._marks)

    def forget(self, sids: Iterable[str]) -> None:
        """Sessions the store no longer has."""
        ids = [s for s in sids if s in self._marks]
        if not ids:
            return
        with self._lock, self._db:
            self._db.execute("DELETE FROM cursor WHERE session_id IN (SELECT value FROM json_each(?))",
                             (json.dumps(ids),))
        for sid in ids:
            self._marks.pop(sid, None)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _take_over(self, legacy: Path, engine: Engine) -> None:
        """Take over a cursor file of the older form (see the module's docstring)."""
        try:
            data: Any = json.loads(legacy.read_text())
            done_before = float(data.get("done_before") or 0.0)
            listed = {str(k): int(v) for k, v in (data.get("sessions") or {}).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            self.log.warning("telemetry: the old cursor file could not be read; sessions are exported from the "
                             "start", error=str(exc))
            done_before, listed = 0.0, {}
        with engine.connect() as conn:
            rows = conn.execute(select(sessions.c.id, sessions.c.last_seq, sessions.c.created_at)).all()
        marks = {}
        for sid, last, created in rows:
            if sid in listed:
                marks[sid] = last if listed[sid] < 0 else listed[sid]
            elif created < done_before:
                marks[sid] = last
        with self._lock, self._db:
            self._db.executemany("INSERT INTO cursor (session_id, seq) VALUES (?, ?) ON CONFLICT(session_id) "
                                 "DO UPDATE SET seq = excluded.seq", list(marks.items()))
        self._marks.update(marks)
        os.replace(legacy, legacy.with_name(legacy.name + ".migrated"))
        self.log.info("telemetry: took over the old cursor file", sessions=len(marks))
