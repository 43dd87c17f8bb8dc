"""store/known_keys.py: a session.start with a new idempotency key needs no store read, and a key the store holds
is never missed (the exactly-one-session guarantee rests on it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event

from labd.store.known_keys import KnownKeys
from labd.store.projections import SessionCursor
from labd.store.queries import Store
from labd.store.schema import IDEMPOTENCY_RETENTION
from labd.store.writer import BatchWriter
from tests.unit.test_store import Batch, engine  # noqa: F401 - the engine fixture (SQLite and PostgreSQL)

CREATED = {"workflow": "demo.count", "name": "s", "params": {}, "limits": {}, "workdir": "/w"}


@pytest.fixture
def reads(engine: Engine) -> Iterator[list[str]]:  # noqa: F811
    """The SQL statements the engine runs while the test reads (appended as they run)."""
    seen: list[str] = []

    def count(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


def _start(writer: BatchWriter, cursors: dict[str, SessionCursor], sid: str, key: str, ts: float) -> None:
    """Commit a session.created carrying idempotency ``key``, as ingest does."""
    b = Batch(cursors)
    b.add(sid, "session.created", {**CREATED, "idempotency_key": key, "request_digest": "d"}, ts=ts)
    b.commit(writer)


def test_a_new_key_costs_no_store_read_and_a_committed_one_is_found(engine: Engine, reads: list[str]) -> None:  # noqa: F811
    """Loaded at start, told by the writer before each commit: a key never seen is answered without SQL, a key
    committed before the load or since is read from the store (and found), also from a second Store."""
    now = time.time()
    writer = BatchWriter(engine)
    cursors: dict[str, SessionCursor] = {}
    _start(writer, cursors, "s1", "before", now)
    known = KnownKeys()
    known.load(engine, now)
    writer.known_keys = known
    store = Store(engine, known)
    _start(writer, cursors, "s2", "since", now)
    reads.clear()
    assert store.idempotent_start("never-seen", now) is None
    assert reads == []  # answered from memory
    assert store.idempotent_start("before", now) == {"session_id": "s1", "digest": "d"}
    assert store.idempotent_start("since", now) == {"session_id": "s2", "digest": "d"}
    assert len(reads) == 2
    assert Store(engine).idempotent_start("since", now) is not None  # without the set: read as before
    writer.close()


def test_keys_past_the_retention_are_not_loaded(engine: Engine) -> None:  # noqa: F811
    """A key older than the retention period is not kept (the store would not replay it either)."""
    now = time.time()
    writer = BatchWriter(engine)
    _start(writer, {}, "old", "old-key", now - IDEMPOTENCY_RETENTION - 60)
    known = KnownKeys()
    known.load(engine, now)
    assert known.complete and not known.may_exist("old-key") and len(known) == 0
    writer.close()


def test_past_its_limit_the_set_gives_up_and_every_lookup_reads_the_store(engine: Engine) -> None:  # noqa: F811
    """Memory stays bounded: more keys within a retention period than the limit (at load, or noted later) and
    the set stops answering "certainly not": every key goes to the store, as without it."""
    now = time.time()
    writer = BatchWriter(engine)
    cursors: dict[str, SessionCursor] = {}
    for i in range(3):
        _start(writer, cursors, f"s{i}", f"k{i}", now)
    loaded = KnownKeys(limit=2)
    loaded.load(engine, now)
    assert not loaded.complete and loaded.may_exist("anything")
    noted = KnownKeys(limit=3)
    noted.load(engine, now)
    assert noted.complete and not noted.may_exist("k3")
    noted.note([{"key": "k3", "created_at": now}])  # a fourth within the retention period
    assert not noted.complete and noted.may_exist("k3") and noted.may_exist("anything") and len(noted) == 0
    writer.close()


def test_noting_drops_expired_keys_before_giving_up() -> None:
    """At the limit, keys older than the retention period (relative to the newest) make room first."""
    known = KnownKeys(limit=2)
    known.complete = True  # as after loading an empty store
    now = time.time()
    known.note([{"key": "a", "created_at": now - 2 * IDEMPOTENCY_RETENTION},
                {"key": "b", "created_at": now - 2 * IDEMPOTENCY_RETENTION + 1}])
    known.note([{"key": "c", "created_at": now}])
    assert known.complete and len(known) == 1 and known.may_exist("c") and not known.may_exist("a")


def test_an_unloaded_set_answers_nothing_from_memory() -> None:
    """Before it is loaded (or if loading failed) every key may exist: the store is read."""
    known = KnownKeys()
    assert known.may_exist("x")
    known.note([{"key": "y", "created_at": 1.0}])
    assert known.may_exist("z")


def test_the_writer_notes_a_key_before_its_commit(engine: Engine) -> None:  # noqa: F811
    """At the moment the store commits a key, the set already has it: a reader on another thread, between the
    commit and a later note, would otherwise take a committed key for a new one and start a second session."""
    now = time.time()
    known = KnownKeys()
    known.load(engine, now)
    writer = BatchWriter(engine, known)
    at_commit: list[bool] = []

    def on_commit(_conn: Any) -> None:
        at_commit.append(known.may_exist("k-commit"))

    event.listen(engine, "commit", on_commit)
    try:
        _start(writer, {}, "s1", "k-commit", now)
    finally:
        event.remove(engine, "commit", on_commit)
    assert at_commit and all(at_commit)
    writer.close()


def test_a_clock_stepped_back_does_not_drop_a_key_the_store_still_holds() -> None:
    """Pruning at the limit drops only keys the store no longer returns either, judged against the present: a key
    noted under a clock that was ahead (then stepped back) stays."""
    known = KnownKeys(limit=2)
    known.complete = True
    now = time.time()
    known.note([{"key": "ahead", "created_at": now + 3 * IDEMPOTENCY_RETENTION}])  # noted with a wrong clock
    known.note([{"key": "today", "created_at": now}, {"key": "also-today", "created_at": now - 60}])
    assert not known.complete or known.may_exist("today")  # never "certainly not" for a key within the retention
    assert known.may_exist("today") and known.may_exist("also-today")
