"""The batch writer: the only code that writes the store, driven by the daemon's ingest thread.

One call to :meth:`BatchWriter.commit` writes a batch of event rows and the projection row changes they
caused in a single transaction, through the DB-API ``executemany`` (10x faster than ORM inserts,
DESIGN.md §9).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from store.projections import RowChanges, SessionCursor
from store.schema import sessions

__all__ = ["BatchWriter", "EventRow"]

# (session_id, seq, ts, kind, src, src_seq, node_id, parent, payload_json)
EventRow = tuple[str, int, float, str, str, int, "str | None", "int | None", str]

_SESSION_UPDATE_COLUMNS = frozenset(c.name for c in sessions.columns) - {"id"}


class BatchWriter:
    """Writes batches; owns one connection; used from a single thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn = engine.connect()
        style = engine.dialect.paramstyle
        ph = "?" if style == "qmark" else "%s"
        self._p = ph
        self._insert_events = ("INSERT INTO events (session_id, seq, ts, kind, src, src_seq, node_id, parent, "
                               f"payload) VALUES ({', '.join([ph] * 9)})")

    def close(self) -> None:
        self._conn.close()

    def load_cursor(self, session_id: str) -> SessionCursor | None:
        """Rebuild ingest's cursor for a session from its row (after a restart, or first sight)."""
        row = self._conn.execute(select(sessions).where(sessions.c.id == session_id)).mappings().first()
        self._conn.rollback()
        if row is None:
            return None
        cur = SessionCursor(id=session_id, last_seq=row["last_seq"], runner_seq=row["runner_seq"],
                            status=row["status"], outcome=row["outcome"], peak_rss=row["peak_rss"],
                            peak_cpu_percent=row["peak_cpu_percent"])
        if row["status"] in ("failed", "cancelled") or row["reason"]:
            cur.outcome_error = row["reason"]
        return cur

    def commit(self, rows: list[EventRow], changes: RowChanges, cursors: dict[str, SessionCursor]) -> None:
        """Write ``rows`` and ``changes`` in one transaction; ``cursors`` give each session's seq marks."""
        conn = self._conn
        p = self._p
        try:
            if changes.session_inserts:
                cols = list(changes.session_inserts[0])
                sql = f"INSERT INTO sessions ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                conn.exec_driver_sql(sql, [tuple(r[c] for c in cols) for r in changes.session_inserts])
            if rows:
                conn.exec_driver_sql(self._insert_events, rows)
            touched = {r[0] for r in rows} | set(changes.session_updates)
            for sid in touched:
                cur = cursors[sid]
                values: dict[str, Any] = dict(changes.session_updates.get(sid, {}))
                values["last_seq"] = cur.last_seq
                values["runner_seq"] = cur.runner_seq
                bad = set(values) - _SESSION_UPDATE_COLUMNS
                if bad:
                    raise ValueError(f"unknown session columns {bad}")
                cols = list(values)
                sql = f"UPDATE sessions SET {', '.join(f'{c} = {p}' for c in cols)} WHERE id = {p}"
                conn.exec_driver_sql(sql, (*[values[c] for c in cols], sid))
            if changes.step_inserts:
                cols = ["session_id", "node_id", "name", "status", "started_at", "start_seq"]
                sql = f"INSERT INTO steps ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                conn.exec_driver_sql(sql, [tuple(r[c] for c in cols) for r in changes.step_inserts])
            if changes.step_updates:
                sql = (f"UPDATE steps SET status = {p}, ended_at = {p}, duration = {p}, error = {p} "
                       f"WHERE session_id = {p} AND node_id = {p}")
                conn.exec_driver_sql(sql, [(r["status"], r["ended_at"], r["duration"], r["error"],
                                            r["session_id"], r["node_id"]) for r in changes.step_updates])
            if changes.history:
                cols = ["session_id", "seq", "ts", "from_status", "to_status", "reason", "actor"]
                sql = f"INSERT INTO state_history ({', '.join(cols)}) VALUES ({', '.join([p] * len(cols))})"
                conn.exec_driver_sql(sql, [tuple(r[c] for c in cols) for r in changes.history])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
