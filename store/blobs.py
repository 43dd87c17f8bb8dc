"""Blobs: content-addressed texts (sha256) that events refer to instead of carrying them.

Write side (ingest): a runner event may carry ``blobs`` ({sha256: text}, checked against the digests by
``ipc.events.validate``) — the texts it refers to for the first time in its session. :func:`take_blobs`
moves them out of the payload into the ``blobs`` table (``INSERT ... ON CONFLICT DO NOTHING``: stored
once for all sessions) and records a ``blob_refs`` row (session, sha256), so the stored and published
event holds only references ``{"$blob": sha256, "size": n}``.

Read side: :func:`inline` replaces references by their texts (``events.query {full: true}``).

Pruning (not done here): delete a session's ``blob_refs`` rows with its events, then the ``blobs`` rows
no ``blob_refs`` row points to (:func:`orphans` lists them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from labd.ipc.events import BLOBS_FIELD
from labd.store.schema import blob_refs, blobs

__all__ = ["take_blobs", "inline", "collect_refs", "orphans"]

REF = "$blob"


def take_blobs(session_id: str, seq: int, ts: float, payload: dict[str, Any], changes: Any) -> dict[str, Any]:
    """``payload`` without its ``blobs`` field; the blobs and references go to ``changes`` (ingest)."""
    new = payload.get(BLOBS_FIELD)
    if new is None:
        return payload
    payload = {k: v for k, v in payload.items() if k != BLOBS_FIELD}
    if isinstance(new, dict):
        for digest, text in new.items():
            changes.blobs.append({"sha256": digest, "size": len(text.encode("utf-8", "surrogatepass")),
                                  "data": text, "created_at": ts})
            changes.blob_refs.append({"session_id": session_id, "sha256": digest, "first_seq": seq})
    return payload


def collect_refs(obj: Any, out: set[str]) -> None:
    """Add the digest of every blob reference in ``obj`` to ``out``."""
    if isinstance(obj, dict):
        ref = obj.get(REF)
        if isinstance(ref, str) and len(obj) <= 3:
            out.add(ref)
            return
        for v in obj.values():
            collect_refs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            collect_refs(v, out)


def _replace(obj: Any, texts: dict[str, str]) -> Any:
    if isinstance(obj, dict):
        ref = obj.get(REF)
        if isinstance(ref, str) and len(obj) <= 3:
            text = texts.get(ref)
            return text if text is not None else {**obj, "missing": True}
        return {k: _replace(v, texts) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, texts) for v in obj]
    return obj


def inline(conn: Connection, payloads: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The payloads with every blob reference replaced by its text (a missing blob stays a reference
    with ``missing: true``)."""
    payloads = list(payloads)
    wanted: set[str] = set()
    for p in payloads:
        collect_refs(p, wanted)
    if not wanted:
        return payloads
    texts: dict[str, str] = {}
    ids = sorted(wanted)
    for i in range(0, len(ids), 500):
        for digest, data in conn.execute(select(blobs.c.sha256, blobs.c.data).where(
                blobs.c.sha256.in_(ids[i:i + 500]))).all():
            texts[digest] = data
    return [_replace(p, texts) for p in payloads]


def orphans(conn: Connection, limit: int = 1000) -> list[str]:
    """Blobs no session refers to any more (what pruning may delete)."""
    q = (select(blobs.c.sha256).where(~select(blob_refs.c.sha256).where(
        blob_refs.c.sha256 == blobs.c.sha256).exists()).limit(limit))
    return [r[0] for r in conn.execute(q).all()]
