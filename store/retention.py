"""Retention: deleting whole sessions from the record, and choosing which ones a policy removes.

Content-addressed blobs (full LLM requests and responses) are shared between sessions and counted by their
``blob_refs`` rows: a blob goes with the last session that refers to it, in the same transaction.

Deletion is generic over the schema: every table with a ``session_id`` column loses that session's rows,
so a projection added later is covered without touching this module. Only the batch writer (on ingest's
thread) calls :func:`delete_sessions`; :func:`prune_candidates` is a read-only query for the request side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, or_, select

from labd.ipc.events import TERMINAL_STATUSES
from labd.store.schema import blob_refs, blobs, events, metadata, sessions

__all__ = ["delete_sessions", "node_dirs", "prune_candidates"]


def _keyed_tables() -> list[Any]:
    """Every table that holds per-session rows (the ``sessions`` table itself last)."""
    out = [t for t in metadata.sorted_tables if "session_id" in t.c and t is not sessions]
    return [*out, sessions]


def delete_sessions(conn: Connection, ids: Iterable[str]) -> dict[str, int]:
    """Delete the given sessions and every row that belongs to them; returns rows deleted per table.

    Runs in the caller's transaction (the caller commits)."""
    ids = list(ids)
    counts: dict[str, int] = {}
    if not ids:
        return counts
    shas: set[str] = set()  # blobs these sessions referred to: deleted below unless another session still does
    for start in range(0, len(ids), 500):
        shas.update(r[0] for r in conn.execute(select(blob_refs.c.sha256).where(
            blob_refs.c.session_id.in_(ids[start:start + 500]))).all())
    for table in _keyed_tables():
        col = table.c.id if table is sessions else table.c.session_id
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            res = conn.execute(table.delete().where(col.in_(ids[start:start + 500])))
            counts[table.name] = counts.get(table.name, 0) + (res.rowcount or 0)
    gone = 0
    ordered = sorted(shas)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start:start + 500]
        still = ~select(blob_refs.c.sha256).where(blob_refs.c.sha256 == blobs.c.sha256).exists()
        gone += conn.execute(blobs.delete().where(blobs.c.sha256.in_(chunk), still)).rowcount or 0
    counts["blobs"] = gone
    return counts


def node_dirs(conn: Connection, ids: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(session, node id, work directory)`` of every placement (``session.placed``) of the sessions of ``ids`` that
    ran on a remote launcher (``pid`` 0; or none, as a session resumed whose new run never launched has: its earlier
    runs may have been placed): read before they are deleted, so that their directories on the nodes can be removed
    too. Reads each such session's events (their deletion reads them all anyway)."""
    ids = list(ids)
    remote: list[str] = []
    for start in range(0, len(ids), 500):
        remote.extend(r[0] for r in conn.execute(select(sessions.c.id).where(
            sessions.c.id.in_(ids[start:start + 500]), or_(sessions.c.pid == 0, sessions.c.pid.is_(None)))))
    found: dict[tuple[str, str, str], None] = {}
    for start in range(0, len(remote), 500):
        for sid, payload in conn.execute(select(events.c.session_id, events.c.payload).where(
                events.c.session_id.in_(remote[start:start + 500]), events.c.kind == "session.placed")):
            placed = orjson.loads(payload)
            node, workdir = placed.get("node"), placed.get("workdir")
            if isinstance(node, str) and node and isinstance(workdir, str) and workdir:
                found[(sid, node, workdir)] = None
    return list(found)


def prune_candidates(engine: Engine, *, ended_before: float, statuses: Iterable[str] | None = None,
                     limit: int = 10_000) -> list[str]:
    """Ids of terminal sessions that ended before ``ended_before`` (epoch seconds), oldest first."""
    wanted = [s for s in (statuses or TERMINAL_STATUSES) if s in TERMINAL_STATUSES]
    q = (select(sessions.c.id).where(sessions.c.status.in_(wanted))
         .where(sessions.c.ended_at.is_not(None)).where(sessions.c.ended_at < ended_before)
         .order_by(sessions.c.ended_at).limit(limit))
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(q).all()]
