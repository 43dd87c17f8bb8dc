"""Read-side queries over the store: sessions, event history by seq, steps and state history.

Readers never write. With SQLite in WAL mode they run beside the ingest writer without blocking it.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from labd.store.schema import (
    IDEMPOTENCY_RETENTION,
    approvals,
    cost_records,
    dag_edges,
    events,
    files,
    idempotency_keys,
    sessions,
    state_history,
    steps,
)

__all__ = ["Store", "MAX_PAGE"]

MAX_PAGE = 5000
MAX_PAGE_BYTES = 8 * 1024 * 1024  # keeps a page well under the 16 MiB message limit


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

    def idempotent_start(self, key: str, now: float) -> dict[str, Any] | None:
        """The session a ``session.start`` with idempotency ``key`` created (``session_id``, ``digest``), if the
        key is still retained at ``now``."""
        q = select(idempotency_keys.c.session_id, idempotency_keys.c.digest).where(
            idempotency_keys.c.key == key, idempotency_keys.c.created_at >= now - IDEMPOTENCY_RETENTION)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return dict(row) if row else None

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
        return self.events_page(session_id, since=since, limit=limit, kinds=kinds)["events"]

    def events_page(self, session_id: str, *, since: int = 0, limit: int = MAX_PAGE,
                    kinds: list[str] | None = None) -> dict[str, Any]:
        """A page of events after ``since``: at most ``limit`` rows and about :data:`MAX_PAGE_BYTES`;
        ``more`` tells whether another page may follow."""
        limit = max(1, min(limit, MAX_PAGE))
        q = (select(events.c.seq, events.c.ts, events.c.kind, events.c.src, events.c.node_id, events.c.parent,
                    events.c.payload, events.c.src_seq)
             .where(events.c.session_id == session_id, events.c.seq > since)
             .order_by(events.c.seq).limit(limit))
        if kinds:
            q = q.where(events.c.kind.in_(kinds))
        out: list[dict[str, Any]] = []
        size = 0
        more = False
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        for r in rows:
            size += len(r[6]) + 100
            if out and size > MAX_PAGE_BYTES:
                more = True
                break
            out.append({"seq": r[0], "ts": r[1], "kind": r[2], "src": "runner" if r[3] == "r" else "daemon",
                        "node_id": r[4], "parent": r[5], "payload": orjson.loads(r[6]), "src_seq": r[7]})
        return {"events": out, "more": more or len(rows) == limit}

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
        return self.sessions(status=["created", "starting", "running", "paused", "waiting_approval"], limit=100_000)

    # ---- agent tracking ---------------------------------------------------------------------------
    def edges(self, session_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(dag_edges.c.src, dag_edges.c.dst, dag_edges.c.type)
                                .where(dag_edges.c.session_id == session_id)).all()
        return [{"src": r[0], "dst": r[1], "type": r[2]} for r in rows]

    def dag(self, session_id: str) -> dict[str, Any]:
        """Nodes (phases, steps, agent turns) and edges of a session's DAG."""
        nodes = self.steps(session_id)
        return {"session": session_id, "nodes": nodes, "edges": self.edges(session_id)}

    def costs(self, session_id: str) -> dict[str, Any]:
        """Cost per call, and summed per agent, model, node and for the session."""
        with self.engine.connect() as conn:
            calls = [dict(r) for r in conn.execute(select(cost_records).where(
                cost_records.c.session_id == session_id).order_by(cost_records.c.seq)).mappings().all()]
            groups: dict[str, list[dict[str, Any]]] = {}
            for col in ("agent", "model", "node_id"):
                c = cost_records.c[col]
                rows = conn.execute(
                    select(c, func.count(), func.sum(cost_records.c.prompt_tokens),
                           func.sum(cost_records.c.completion_tokens), func.sum(cost_records.c.cost))
                    .where(cost_records.c.session_id == session_id).group_by(c).order_by(c)).all()
                groups[col] = [{col: r[0], "calls": r[1], "prompt_tokens": int(r[2] or 0),
                                "completion_tokens": int(r[3] or 0), "cost": float(r[4] or 0.0)} for r in rows]
        total = {"calls": len(calls), "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
                 "completion_tokens": sum(c["completion_tokens"] for c in calls),
                 "cost": sum(c["cost"] for c in calls), "offline": any(c["offline"] for c in calls)}
        return {"session": session_id, "total": total, "by_agent": groups["agent"], "by_model": groups["model"],
                "by_node": groups["node_id"], "calls": calls}

    def files(self, session_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(files).where(files.c.session_id == session_id)
                                .order_by(files.c.seq)).mappings().all()
        return [dict(r) for r in rows]

    def approvals(self, *, session_id: str | None = None, status: str | None = None,
                  limit: int = 500) -> list[dict[str, Any]]:
        q = select(approvals).order_by(approvals.c.requested_at).limit(limit)
        if session_id:
            q = q.where(approvals.c.session_id == session_id)
        if status:
            q = q.where(approvals.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["options"] = orjson.loads(d["options"])
            d["context"] = orjson.loads(d["context"])
            out.append(d)
        return out
