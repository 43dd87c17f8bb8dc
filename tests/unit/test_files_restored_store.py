"""The ``restored`` flag of the files table: ingest keeps it from a ``file.*`` event's payload, and migration 0008
fills it for the rows a store recorded before (from their events), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Engine

from labd.store.db import migrate
from labd.store.queries import Store
from labd.store.schema import events
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch, downgrade_to, engine, writer  # noqa: F401 - the fixtures (SQLite and PostgreSQL)

_DIGEST = "ab" * 32


def _file(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "sha256": _DIGEST, "size": 3, "kind": "text", **extra}


def test_ingest_keeps_the_restored_flag_of_file_events(engine: Engine, writer: BatchWriter) -> None:  # noqa: F811
    """A ``file.*`` event whose payload has ``restored: true`` (a resume's or branch's restore) gives a files row
    with ``restored`` True; a step's file event, and one whose ``restored`` is anything but ``true``, give False.
    Before, the flag was dropped and the files rows had no ``restored`` at all."""
    b = Batch({})
    b.add("s1", "session.created", CREATED)
    b.add("s1", "file.created", _file("back.txt", restored=True), src="r")
    b.add("s1", "file.deleted", {k: v for k, v in _file("junk.txt", restored=True).items() if k != "size"}, src="r")
    b.add("s1", "file.changed", _file("odd.txt", restored="yes"), src="r")
    b.add("s1", "step.started", {"name": "s0"}, src="r", node="n1")
    b.add("s1", "file.created", _file("new.txt"), src="r", node="n1")
    b.commit(writer)
    rows = Store(engine).files("s1")
    assert [(f["path"], f["restored"]) for f in rows] == [
        ("back.txt", True), ("junk.txt", True), ("odd.txt", False), ("new.txt", False)]


def _at_0007(eng: Engine) -> None:
    """Take the (empty, migrated) store back to revision 0007, before the files table had ``restored``."""
    downgrade_to(eng, "0007_clip_reasons")
    assert "restored" not in {c["name"] for c in sa.inspect(eng).get_columns("files")}


def test_migration_0008_fills_restored_from_the_events(engine: Engine) -> None:  # noqa: F811
    """A store at revision 0007 holding files rows and their events, as ingest wrote them then (no ``restored``
    column): migrating to head gives the column, True for the rows whose event says ``restored: true`` (created,
    changed or deleted; here also rows past the first batch of the backfill, and in a second session), False for
    the others: a step's file (it has a node), a node-less event without the flag or with ``restored: false``.
    Before the migration existed, the column was missing (or False everywhere)."""
    _at_0007(engine)
    files = sa.table("files", *(sa.column(c) for c in ("session_id", "seq", "path", "change", "sha256", "size", "kind",
                                                      "node_id", "agent", "tool", "ts", "candidates")))
    event_rows: list[dict[str, Any]] = []
    file_rows: list[dict[str, Any]] = []

    def record(sid: str, seq: int, change: str, payload: dict[str, Any], node: str | None = None) -> None:
        event_rows.append({"session_id": sid, "seq": seq, "ts": float(seq), "kind": f"file.{change}", "src": "r",
                           "src_seq": seq, "node_id": node, "parent": None, "payload": orjson.dumps(payload).decode()})
        file_rows.append({"session_id": sid, "seq": seq, "path": payload["path"], "change": change,
                          "sha256": payload["sha256"], "size": payload.get("size", 0), "kind": payload["kind"],
                          "node_id": node, "agent": None, "tool": None, "ts": float(seq), "candidates": None})

    for seq in range(1, 2501):  # more than one batch (0008's BATCH = 2000) of node-less rows before the restored ones
        record("s1", seq, "created", _file(f"plain/{seq}.txt"))
    record("s1", 2501, "created", _file("back.txt", restored=True))
    record("s1", 2502, "changed", _file("data.txt", restored=True))
    record("s1", 2503, "deleted", {k: v for k, v in _file("junk.txt", restored=True).items() if k != "size"})
    record("s1", 2504, "created", _file("said-no.txt", restored=False))
    record("s1", 2505, "created", _file("by-step.txt"), node="n1")
    record("s2", 1, "created", _file("kid.txt", restored=True))
    record("s2", 2, "changed", _file("kid.txt"), node="n1")
    with engine.begin() as conn:
        conn.execute(sa.insert(events), event_rows)
        conn.execute(sa.insert(files), file_rows)
    migrate(engine)
    store = Store(engine)
    s1 = {f["seq"]: f for f in store.files("s1")}
    assert len(s1) == 2505
    assert {seq for seq, f in s1.items() if f["restored"] is True} == {2501, 2502, 2503}
    assert all(f["restored"] is False for seq, f in s1.items() if seq not in (2501, 2502, 2503))
    assert [(f["path"], f["change"], f["restored"]) for f in store.files("s2")] == [
        ("kid.txt", "created", True), ("kid.txt", "changed", False)]


def test_rows_written_after_0008_without_the_flag_read_false(engine: Engine) -> None:  # noqa: F811
    """The column's server default is false: a files row inserted without ``restored`` (as a writer of an older
    version would) reads back ``restored`` False, not NULL."""
    files = sa.table("files", *(sa.column(c) for c in ("session_id", "seq", "path", "change", "sha256", "size", "kind",
                                                      "ts")))
    with engine.begin() as conn:
        conn.execute(sa.insert(files), [{"session_id": "s1", "seq": 1, "path": "a.txt", "change": "created",
                                         "sha256": _DIGEST, "size": 1, "kind": "text", "ts": 1.0}])
    assert [f["restored"] for f in Store(engine).files("s1")] == [False]

