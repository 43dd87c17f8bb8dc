"""Store.events_page reads a page's rows a few at a time (stream_results, READ_ROWS) and, with ``full``, inlines the
blobs of each few on the same connection while the rest are still to be fetched: on PostgreSQL that is a server-side
cursor with other queries running beside it. Pinned here on both databases (review of 2026-12-02)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import orjson
import pytest
from sqlalchemy import Engine

import labd.store.queries as queries
from labd.store.queries import READ_ROWS, Store
from labd.store.schema import blobs
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch, engine, writer  # noqa: F401 - fixtures

__all__ = ["engine", "writer"]


def test_a_full_page_inlines_blobs_across_streamed_reads(engine: Engine, writer: BatchWriter,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """100 events (over three reads of READ_ROWS rows) each referring to a blob of its own: a ``full`` page returns
    every one with its text inlined, in seq order, ``more`` False; with a byte bound it stops short of it (at least one
    event, ``more`` True); and an exception while a page is read leaves no connection checked out."""
    texts = [f"text {i} " * 50 for i in range(100)]
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    with engine.begin() as conn:
        conn.execute(blobs.insert(), [{"sha256": d, "size": len(t), "data": t, "created_at": 1.0}
                                      for d, t in zip(digests, texts, strict=True)])
    b = Batch({})
    b.add("s1", "session.created", dict(CREATED))
    for d in digests:
        b.add("s1", "custom", {"name": "llm", "data": {"$blob": d, "size": 400}}, src="r")
    b.commit(writer)
    store = Store(engine)
    assert 3 * READ_ROWS < 100
    page = store.events_page("s1", since=1, full=True)
    assert [e["payload"]["data"] for e in page["events"]] == texts and page["more"] is False
    assert [e["seq"] for e in page["events"]] == list(range(2, 102))
    small = store.events_page("s1", since=1, full=True, max_bytes=5000)
    assert 1 <= len(small["events"]) < 100 and small["more"] is True
    assert [e["payload"]["data"] for e in small["events"]] == texts[:len(small["events"])]
    one = store.events_page("s1", since=1, full=True, max_bytes=1)
    assert len(one["events"]) == 1 and one["more"] is True
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    calls = [0]

    def failing(data: str) -> object:
        calls[0] += 1
        if calls[0] > 40:  # in the second read of rows
            raise RuntimeError("boom")
        return orjson.loads(data)

    monkeypatch.setattr(queries, "orjson", SimpleNamespace(loads=failing, dumps=orjson.dumps))
    with pytest.raises(RuntimeError):
        store.events_page("s1", since=1)
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]
