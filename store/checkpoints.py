"""Reading durable-step checkpoints back from the event log (the ``step.checkpoint`` events).

Checkpoints are events, not a table of their own: the log stays the single source of truth, retention
deletes them with the session's events, and their file contents live in the session directory's object
store (``checkpoints/objects``), which ``labd rm``/``prune`` delete with the directory.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from sqlalchemy import select

from labd.runner.names import b64_key
from labd.store.schema import events, files, steps

__all__ = ["checkpoints", "max_node_number", "step_row", "recorded_files", "shipped_files"]

_NODE_NUMBER = re.compile(r"^[nf](\d+)(?:\.|$)")  # n12 (the runner's), f12.3 (a forked child's, fork 12)


def checkpoints(store: Any, session_id: str, before_seq: int | None = None) -> list[dict[str, Any]]:
    """The session's checkpoints in record order: ``{seq, node_id, **payload}``."""
    q = (select(events.c.seq, events.c.node_id, events.c.payload)
         .where(events.c.session_id == session_id, events.c.kind == "step.checkpoint").order_by(events.c.seq))
    if before_seq is not None:
        q = q.where(events.c.seq < before_seq)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    return [{"seq": r[0], "node_id": r[1], **orjson.loads(r[2])} for r in rows]


def max_node_number(store: Any, session_id: str) -> int:
    """The highest number of the session's DAG node ids, the runner's ``n<number>`` and the fork number of a forked
    child's ``f<number>.<i>``: a resumed runner numbers its new nodes and forks after it."""
    with store.engine.connect() as conn:
        ids = conn.execute(select(steps.c.node_id).where(steps.c.session_id == session_id)).scalars().all()
    return max((int(m.group(1)) for m in map(_NODE_NUMBER.match, ids) if m), default=0)


def step_row(store: Any, session_id: str, node_id: str) -> dict[str, Any] | None:
    """One DAG node of a session, or None."""
    with store.engine.connect() as conn:
        row = conn.execute(select(steps).where(steps.c.session_id == session_id,
                                               steps.c.node_id == node_id)).mappings().first()
    return dict(row) if row else None


def recorded_files(store: Any, session_id: str) -> dict[str, str]:
    """The work directory as the session's ``file.*`` events leave it: manifest key -> sha256 (what a resume's
    restore is recorded against: only what it changes gets an event). Keyed as checkpoint manifests are
    (:func:`labd.runner.names.manifest_key`): a name that is not UTF-8 by its exact bytes, so that neither it nor a
    file literally named as its display form is taken for the other."""
    q = (select(files.c.path, files.c.path_b64, files.c.change, files.c.sha256)
         .where(files.c.session_id == session_id).order_by(files.c.seq))
    out: dict[str, str] = {}
    with store.engine.connect() as conn:
        for path, b64, change, digest in conn.execute(q):
            # a path_b64 that names nothing (a damaged record): its display path is all there is
            key = (b64_key(b64) if b64 else None) or path
            if change == "deleted":
                out.pop(key, None)
            else:
                out[key] = digest
    return out


def shipped_files(store: Any, session_id: str) -> dict[str, str]:
    """The daemon's copy of a remote session's work directory as its ``file.shipped`` events left it: manifest key ->
    sha256 of each file whose last chunk was kept (deleted ones gone). A resumed remote runner starts its shipping
    from it, so it ships only what differs and deletes at home what its restore removed on the node (it started
    from nothing: the home kept files the restore had removed, and every restored file was shipped again)."""
    out: dict[str, str] = {}
    since = 0
    while True:
        page = store.events(session_id, since=since, kinds=["file.shipped"])
        for ev in page:
            p = ev["payload"]
            key = (b64_key(p["path_b64"]) if p.get("path_b64") else None) or str(p.get("path"))
            if p.get("deleted"):
                out.pop(key, None)
            elif p.get("last") and not p.get("error"):
                out[key] = str(p.get("sha256"))
        if not page:
            return out
        since = page[-1]["seq"]

