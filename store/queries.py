"""Read-side queries over the store: sessions, event history by seq, steps and state history.

Readers never write. With SQLite in WAL mode they run beside the ingest writer without blocking it.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, select

from store.schema import events, sessions, state_history, steps

__all__ = ["Store", "MAX_PAGE"]

MAX_PAGE = 5000


def _session_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    d["params"] = orjson.loads(d["params"])
    d["limits"] = orjson.loads(d["limits"])
    return d


class Store:
    """Query helper bound to an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self, session_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == session_id)).mappings().first()
        return _session_dict(row) if row else None

    def find_session(self, ref: str) -> list[dict[str, Any]]:
        """Sessions whose id starts with ``ref`` or whose name equals it (newest first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(sessions).where((sessions.c.id.startswith(ref, autoescape=True)) | (sessions.c.name == ref))
                .order_by(sessions.c.created_at.desc()).limit(20)
            ).mappings().all()
        return [_session_dict(r) for r in rows]

    def sessions(self, *, status: list[str] | None = None, limit: int = 200) -> list[dict[str, Any]]:
        q = select(sessions).order_by(sessions.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(sessions.c.status.in_(status))
        with self.engine.connect() as conn:
            return [_session_dict(r) for r in conn.execute(q).mappings().all()]

    def events(self, session_id: str, *, since: int = 0, limit: int = MAX_PAGE,
               kinds: list[str] | None = None) -> list[dict[str, Any]]:
        """Events with ``seq > since`` in seq order, at most ``limit`` (capped at :data:`MAX_PAGE`)."""
        limit = max(1, min(limit, MAX_PAGE))
        q = (select(events.c.seq, events.c.ts, events.c.kind, events.c.src, events.c.node_id, events.c.parent,
                    events.c.payload)
             .where(events.c.session_id == session_id, events.c.seq > since)
             .order_by(events.c.seq).limit(limit))
        if kinds:
            q = q.where(events.c.kind.in_(kinds))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [{"seq": r[0], "ts": r[1], "kind": r[2], "src": "runner" if r[3] == "r" else "daemon",
                 "node_id": r[4], "parent": r[5], "payload": orjson.loads(r[6])} for r in rows]

    def steps(self, session_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(steps).where(steps.c.session_id == session_id)
                                .order_by(steps.c.start_seq)).mappings().all()
        return [dict(r) for r in rows]

    def history(self, session_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(state_history).where(state_history.c.session_id == session_id)
                                .order_by(state_history.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def live_sessions(self) -> list[dict[str, Any]]:
        """Sessions not in a terminal status (what a restarted daemon must adopt or mark lost)."""
        return self.sessions(status=["created", "starting", "running"], limit=100_000)
