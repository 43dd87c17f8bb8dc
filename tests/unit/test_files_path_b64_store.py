"""``files.path_b64``, the exact bytes of a file name that is not UTF-8: ingest keeps it from a ``file.*`` event,
migration 0013 fills it for the rows a store recorded before (from their events), and the record's files as a resume
restores against them (``recorded_files``) keep such a file apart from one really named as its display form; on
SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import Engine

from labd.ipc.safe_files import listed_name
from labd.runner.names import manifest_key
from labd.store.checkpoints import recorded_files
from labd.store.db import migrate
from labd.store.queries import Store
from labd.store.schema import events
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch, downgrade_to, engine, writer  # noqa: F401 - the fixtures (SQLite and PostgreSQL)

_DIGEST = "ab" * 32
RAW = b"bad\xff.txt"
SHOWN = "bad\\xff.txt"
B64 = base64.b64encode(RAW).decode()


def _file(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "sha256": _DIGEST, "size": 3, "kind": "text", **extra}


def test_ingest_keeps_path_b64_and_the_record_tells_the_two_names_apart(engine: Engine,  # noqa: F811
                                                                       writer: BatchWriter) -> None:  # noqa: F811
    """A file event with ``path_b64`` gives a files row with it; one without (the file really named ``bad\\xff.txt``)
    gives NULL; a ``path_b64`` that is not a string (the runner is the session's code) is not kept. The record's
    files (what a resume restores against) key the first by its bytes, so the deletion of the second leaves it."""
    b = Batch({})
    b.add("s1", "session.created", CREATED)
    b.add("s1", "file.created", _file(SHOWN, path_b64=B64), src="r")
    b.add("s1", "file.created", _file(SHOWN), src="r")
    b.add("s1", "file.created", _file("odd.txt", path_b64=12), src="r")
    b.add("s1", "file.deleted", {k: v for k, v in _file(SHOWN).items() if k != "size"}, src="r")
    b.commit(writer)
    store = Store(engine)
    rows = store.files("s1")
    assert [(f["path"], f["path_b64"], f["change"]) for f in rows] == [
        (SHOWN, B64, "created"), (SHOWN, None, "created"), ("odd.txt", None, "created"), (SHOWN, None, "deleted")]
    assert recorded_files(store, "s1") == {manifest_key(os.fsdecode(RAW)): _DIGEST, "odd.txt": _DIGEST}
    # and a front-end opens the bytes-named file by its bytes, the other only by its plain path
    assert listed_name(rows, SHOWN, B64) == os.fsdecode(RAW)
    assert listed_name(rows, SHOWN) == SHOWN
    assert listed_name([r for r in rows if r["path_b64"]], SHOWN) is None
    assert listed_name(rows, SHOWN, base64.b64encode(b"bad\xfe.txt").decode()) is None


def test_migration_0013_fills_path_b64_from_the_events(engine: Engine) -> None:  # noqa: F811
    """A store at revision 0012 holding files rows and their events as ingest wrote them then (no ``path_b64``
    column): migrating to head gives the column, set from the event for the rows whose event has a valid one (also
    past the first batch of the backfill, in a second session, a deletion), NULL for the others: a file named with
    a backslash and no ``path_b64``, a plain name, a ``path_b64`` that is not base64."""
    downgrade_to(engine, "0012_cost_sums")
    assert "path_b64" not in {c["name"] for c in sa.inspect(engine).get_columns("files")}
    files = sa.table("files", *(sa.column(c) for c in ("session_id", "seq", "path", "change", "sha256", "size", "kind",
                                                      "node_id", "agent", "tool", "ts", "candidates", "restored")))
    event_rows: list[dict[str, Any]] = []
    file_rows: list[dict[str, Any]] = []

    def record(sid: str, seq: int, change: str, payload: dict[str, Any]) -> None:
        event_rows.append({"session_id": sid, "seq": seq, "ts": float(seq), "kind": f"file.{change}", "src": "r",
                           "src_seq": seq, "node_id": None, "parent": None, "payload": orjson.dumps(payload).decode()})
        file_rows.append({"session_id": sid, "seq": seq, "path": payload["path"], "change": change,
                          "sha256": payload["sha256"], "size": payload.get("size", 0), "kind": payload["kind"],
                          "node_id": None, "agent": None, "tool": None, "ts": float(seq), "candidates": None,
                          "restored": False})

    for seq in range(1, 2501):  # more than one batch (BATCH = 2000) of backslashed names before the ones to fill
        record("s1", seq, "created", _file(f"lit\\x{seq}.txt"))
    record("s1", 2501, "created", _file(SHOWN, path_b64=B64))
    record("s1", 2502, "created", _file(SHOWN))
    record("s1", 2503, "created", _file("plain.txt"))
    record("s1", 2504, "created", _file("junk\\xff", path_b64="not base64!"))
    record("s2", 1, "deleted", {k: v for k, v in _file(SHOWN, path_b64=B64).items() if k != "size"})
    with engine.begin() as conn:
        conn.execute(sa.insert(events), event_rows)
        conn.execute(sa.insert(files), file_rows)
    migrate(engine)
    store = Store(engine)
    s1 = {f["seq"]: f["path_b64"] for f in store.files("s1")}
    assert len(s1) == 2504
    assert {seq: b64 for seq, b64 in s1.items() if b64 is not None} == {2501: B64}
    assert [(f["path"], f["path_b64"]) for f in store.files("s2")] == [(SHOWN, B64)]
