"""Unit tests for the store: migrations, BatchWriter.commit, retention and the Store read queries — each run on
both backends: a temp SQLite file and a real PostgreSQL server (a fresh schema per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, inspect

from labd.store.db import downgrade, migrate, open_engine
from labd.store.projections import RowChanges, SessionCursor, apply
from labd.store.queries import Store
from labd.store.writer import ROWS_PER_STATEMENT, BatchWriter, EventRow

CREATED = {"workflow": "demo.count", "name": "first", "params": {"n": 2}, "limits": {"memory": 1024},
           "workdir": "/w/s1"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database: SQLite in tmp_path, or a fresh schema on the test run's PostgreSQL server."""
    if request.param == "sqlite":
        eng = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
        migrate(eng)
        yield eng
        eng.dispose()
        return
    import uuid

    import sqlalchemy as sa

    url = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    eng = open_engine(f"{url}?options=-csearch_path%3D{schema}")
    migrate(eng)
    yield eng
    eng.dispose()
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def writer(engine: Engine) -> Iterator[BatchWriter]:
    w = BatchWriter(engine)
    yield w
    w.close()


class Batch:
    """Builds one batch like ingest does: apply() each event, collect event rows and row changes."""

    def __init__(self, cursors: dict[str, SessionCursor]) -> None:
        self.cursors = cursors
        self.rows: list[EventRow] = []
        self.changes = RowChanges()

    def add(self, sid: str, kind: str, payload: dict[str, Any], *, src: str = "d", node: str | None = None,
            ts: float | None = None) -> None:
        cur = self.cursors.setdefault(sid, SessionCursor(id=sid))
        seq = cur.last_seq + 1
        src_seq = 0
        if src == "r":
            cur.runner_seq += 1
            src_seq = cur.runner_seq
        payload = dict(payload)
        apply(cur, seq, ts if ts is not None else 1000.0 + seq, kind, src, node, payload, self.changes)
        self.rows.append((sid, seq, ts if ts is not None else 1000.0 + seq, kind, src, src_seq, node, None,
                          orjson.dumps(payload).decode()))

    def commit(self, writer: BatchWriter) -> None:
        writer.commit(self.rows, self.changes, self.cursors)


def _run_session(writer: BatchWriter, cursors: dict[str, SessionCursor], sid: str = "s1",
                 created: dict[str, Any] | None = None, base_ts: float = 0.0) -> None:
    """Two batches: creation/launch, then a run with one step that completes."""
    b = Batch(cursors)
    b.add(sid, "session.created", {**CREATED, **(created or {})}, ts=base_ts + 1)
    b.add(sid, "session.launched", {"pid": 4242, "create_time": 5.0, "launcher": "template"}, ts=base_ts + 2)
    b.commit(writer)
    b = Batch(cursors)
    b.add(sid, "session.started", {"pid": 4242, "workdir": "/w/s1"}, src="r", ts=base_ts + 3)
    b.add(sid, "step.started", {"name": "count 1"}, src="r", node="n1", ts=base_ts + 4)
    b.add(sid, "output", {"stream": "stdout", "text": "count 1/2\n"}, src="r", node="n1", ts=base_ts + 5)
    b.add(sid, "step.finished", {"name": "count 1", "status": "completed", "duration": 0.5}, src="r", node="n1",
          ts=base_ts + 6)
    b.add(sid, "session.finished", {"outcome": "completed", "result": 2}, src="r", ts=base_ts + 7)
    b.add(sid, "session.ended", {"ended_by": "runner", "exit_code": 0}, ts=base_ts + 8)
    b.commit(writer)


def test_migrate_creates_the_tables_and_is_idempotent(engine: Engine, writer: BatchWriter) -> None:
    """migrate() creates the core tables; running it again changes nothing and keeps the data."""
    names = set(inspect(engine).get_table_names())
    assert {"sessions", "events", "steps", "state_history"} <= names
    _run_session(writer, {})
    migrate(engine)
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == names
    assert Store(engine).session("s1") is not None
    assert len(Store(engine).events("s1")) == 8


def downgrade_to(eng: Engine, revision: str) -> None:
    """Take a migrated store back to Alembic ``revision`` (a migration's test then writes rows as they were)."""
    downgrade(eng, revision)


def test_migration_0007_cuts_the_long_reasons_recorded_before(engine: Engine, writer: BatchWriter) -> None:
    """A store written before reasons were bounded (revision 0006) may hold a 900,000-character ``reason`` /
    ``outcome_error`` (and state-history ``reason``) that makes every session.list too large: migrating cuts them
    to 10,000 characters + ``… (N more)``; short texts and everything else are left as they were."""
    import sqlalchemy as sa

    from labd.store.projections import MAX_REASON
    from labd.store.schema import sessions, state_history

    _run_session(writer, {})
    downgrade_to(engine, "0006_lineage")
    long = "workflow failed: " + "x" * 900_000
    with engine.begin() as conn:
        conn.execute(sa.update(sessions).values(reason=long, outcome_error=long[17:]))
        conn.execute(sa.update(state_history).where(state_history.c.to_status == "completed").values(reason=long))
    migrate(engine)
    row = Store(engine).session("s1")
    assert row is not None
    assert row["reason"] == long[:MAX_REASON] + f"… ({len(long) - MAX_REASON} more)"
    assert row["outcome_error"] == long[17:17 + MAX_REASON] + f"… ({len(long) - 17 - MAX_REASON} more)"
    history = Store(engine).history("s1")
    assert {h["reason"] for h in history if h["to_status"] == "completed"} == {row["reason"]}
    assert [h["reason"] for h in history if h["to_status"] == "running"] == ["runner started", "started"]
    assert row["params"] == {"n": 2} and len(Store(engine).events("s1")) == 8


def test_session_row_reads_back(engine: Engine, writer: BatchWriter) -> None:
    """The session row has the final status, reason, pid, seq marks and decoded params/limits."""
    cursors: dict[str, SessionCursor] = {}
    _run_session(writer, cursors)
    row = Store(engine).session("s1")
    assert row is not None
    assert (row["status"], row["reason"], row["outcome"]) == ("completed", "completed", "completed")
    assert (row["pid"], row["pid_create_time"], row["exit_code"], row["ended_by"]) == (4242, 5.0, 0, "runner")
    assert (row["created_at"], row["started_at"], row["ended_at"]) == (1.0, 3.0, 8.0)
    assert row["params"] == {"n": 2} and row["limits"] == {"memory": 1024}
    assert (row["last_seq"], row["runner_seq"]) == (8, 5)
    assert Store(engine).session("nope") is None


def test_events_read_back_in_seq_order_with_filters(engine: Engine, writer: BatchWriter) -> None:
    """Store.events returns decoded payloads in seq order, honouring since, kinds and limit."""
    _run_session(writer, {})
    store = Store(engine)
    evs = store.events("s1")
    assert [e["seq"] for e in evs] == list(range(1, 9))
    assert [e["kind"] for e in evs][:3] == ["session.created", "session.launched", "session.started"]
    out = evs[4]
    assert out["kind"] == "output" and out["src"] == "runner" and out["node_id"] == "n1"
    assert out["payload"] == {"stream": "stdout", "text": "count 1/2\n"} and out["ts"] == 5.0
    assert evs[0]["src"] == "daemon"
    assert evs[-1]["payload"]["status"] == "completed"  # the completed session.ended payload is stored
    assert [e["seq"] for e in store.events("s1", since=6)] == [7, 8]
    assert [e["seq"] for e in store.events("s1", limit=2)] == [1, 2]
    assert [e["seq"] for e in store.events("s1", kinds=["output", "step.started"])] == [4, 5]
    assert store.events("other") == []


def test_plain_rows_commit_with_the_others_and_advance_their_sessions(engine: Engine, writer: BatchWriter) -> None:
    """Rows without node id and parent (``store.writer.PlainRow``) and with a node id but no parent (``NodeRow``),
    each shape inserted by its own statement that binds no NULL, commit in one transaction with full rows: read back
    in seq order with NULL where nothing was bound; a session touched only by plain rows has its
    ``last_seq``/``runner_seq`` advanced in that transaction; a duplicate key in any shape rolls back all."""
    cursors: dict[str, SessionCursor] = {}
    for sid in ("s1", "s2"):
        b = Batch(cursors)
        b.add(sid, "session.created", {**CREATED, "name": sid}, ts=1.0)
        b.commit(writer)
    c1, c2 = cursors["s1"], cursors["s2"]
    full: list[EventRow] = [("s1", 2, 2.0, "custom", "r", 1, "n1", 1, '{"name":"in a step"}')]
    plain = [("s1", 3, 3.0, "custom", "r", 2, '{"name":"a","data":1}'),
             ("s2", 2, 2.5, "log", "r", 1, '{"level":"info","event":"x"}'),
             ("s2", 3, 2.6, "output", "r", 2, '{"stream":"stdout","text":"é\\n"}')]
    noded = [("s1", 4, 4.0, "custom", "r", 3, "n2", '{"name":"b"}')]
    c1.last_seq, c1.runner_seq, c2.last_seq, c2.runner_seq = 4, 3, 3, 2
    writer.commit(full, RowChanges(), cursors, plain, noded)
    store = Store(engine)
    e1, e2 = store.events("s1"), store.events("s2")
    assert [(e["seq"], e["node_id"], e["parent"]) for e in e1] == [(1, None, None), (2, "n1", 1), (3, None, None),
                                                                   (4, "n2", None)]
    assert e1[3]["payload"] == {"name": "b"} and e1[3]["src_seq"] == 3
    assert e1[2]["payload"] == {"name": "a", "data": 1} and e1[2]["src"] == "runner" and e1[2]["src_seq"] == 2
    assert [(e["seq"], e["kind"], e["node_id"], e["parent"]) for e in e2] == [
        (1, "session.created", None, None), (2, "log", None, None), (3, "output", None, None)]
    assert e2[2]["payload"] == {"stream": "stdout", "text": "é\n"}
    assert (writer.load_cursor("s2").last_seq, writer.load_cursor("s2").runner_seq) == (3, 2)  # type: ignore[union-attr]
    with pytest.raises(Exception):  # noqa: B017, PT011 - a duplicate key among plain rows rolls everything back
        writer.commit([("s1", 5, 5.0, "custom", "r", 4, None, None, '{"name":"c"}')], RowChanges(), cursors,
                      [("s1", 6, 6.0, "custom", "r", 5, '{"name":"d"}')], [("s1", 4, 3.0, "custom", "r", 3, "n", "{}")])
    assert [e["seq"] for e in store.events("s1")] == [1, 2, 3, 4]


def test_checkpointer_copies_the_log_back_and_truncates_it_at_stop(tmp_path: Path) -> None:
    """The writer's connection never checkpoints (``wal_autocheckpoint=0``): the Checkpointer thread copies the
    write-ahead log into the database file on its own connection while the writer goes on, and leaves an empty
    log when it stops; nothing written is lost on the way."""
    import os

    from labd.store.db import Checkpointer
    from tests.conftest import wait_until

    db = tmp_path / "labd.db"
    eng = open_engine(f"sqlite:///{db}")
    migrate(eng)
    w = BatchWriter(eng)
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    b.add("s1", "session.created", CREATED, ts=1.0)
    b.commit(w)
    cur = cursors["s1"]
    wal = Path(f"{db}-wal")

    def write(n: int) -> None:
        rows = [("s1", cur.last_seq + i, 2.0, "custom", "r", cur.runner_seq + i, orjson.dumps({"name": "x" * 200,
                 "data": i}).decode()) for i in range(1, n + 1)]
        cur.last_seq += n
        cur.runner_seq += n
        w.commit([], RowChanges(), cursors, rows)

    for _ in range(5):
        write(2000)
    size_before = os.path.getsize(db)
    assert wal.stat().st_size > size_before  # the writer left it all in the log
    ck = Checkpointer(eng, interval=0.05)
    ck.start()
    try:
        wait_until(lambda: os.path.getsize(db) > size_before + 1_000_000, timeout=30, what="a checkpoint")
        write(2000)  # the writer is never blocked by the checkpointer
    finally:
        ck.stop()
        ck.join(30)
    assert not ck.is_alive() and wal.stat().st_size == 0
    assert Store(eng).session("s1")["last_seq"] == 1 + 6 * 2000
    assert len(Store(eng).events("s1", since=12_000, limit=10)) == 1
    w.close()
    eng.dispose()


def test_steps_read_back(engine: Engine, writer: BatchWriter) -> None:
    """A started-then-finished step is one row with its final status and duration."""
    _run_session(writer, {})
    (step,) = Store(engine).steps("s1")
    assert (step["node_id"], step["name"], step["status"]) == ("n1", "count 1", "completed")
    assert (step["started_at"], step["ended_at"], step["duration"], step["start_seq"]) == (4.0, 6.0, 0.5, 4)


def test_history_reads_back_in_order(engine: Engine, writer: BatchWriter) -> None:
    """The session's state history is every transition, in seq order, with reasons and actors."""
    _run_session(writer, {})
    hist = [h for h in Store(engine).history("s1") if h.get("node_id") is None]
    assert [(h["from_status"], h["to_status"]) for h in hist] == [
        (None, "created"), ("created", "starting"), ("starting", "running"), ("running", "completed")]
    assert [h["actor"] for h in hist] == ["client", "daemon", "runner", "daemon"]
    assert hist[1]["reason"] == "launched pid 4242"


def test_sessions_list_newest_first_and_by_status(engine: Engine, writer: BatchWriter) -> None:
    """Store.sessions lists newest first and filters by status; find_session matches id prefix or name."""
    cursors: dict[str, SessionCursor] = {}
    _run_session(writer, cursors, "s1", base_ts=0)
    b = Batch(cursors)
    b.add("s2", "session.created", {**CREATED, "name": "second"}, ts=50.0)
    b.commit(writer)
    store = Store(engine)
    assert [r["id"] for r in store.sessions()] == ["s2", "s1"]
    assert [r["id"] for r in store.sessions(status=["completed"])] == ["s1"]
    assert [r["id"] for r in store.live_sessions()] == ["s2"]
    assert [r["id"] for r in store.find_session("second")] == ["s2"]
    assert {r["id"] for r in store.find_session("s")} == {"s1", "s2"}
    assert store.find_session("%") == []  # LIKE wildcards are escaped


def test_sessions_pages_list_each_session_once_even_when_created_at_ties(engine: Engine,
                                                                          writer: BatchWriter) -> None:
    """Store.sessions' ``before`` (a page's last session, as session.list's ``next`` names it) continues the list
    newest first with the id breaking ties: paging one at a time through sessions created in the same instant lists
    each once, in the order one whole list gives; and the list is read from the (created_at, id) index."""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    for sid, ts in (("a1", 5.0), ("b2", 7.0), ("c3", 7.0), ("d4", 7.0), ("e5", 9.0)):
        b.add(sid, "session.created", {**CREATED, "name": sid}, ts=ts)
    b.commit(writer)
    store = Store(engine)
    whole = [r["id"] for r in store.sessions()]
    assert whole == ["e5", "d4", "c3", "b2", "a1"]
    paged: list[str] = []
    before = None
    while page := store.sessions(limit=1, before=before):
        paged.append(page[0]["id"])
        before = (page[0]["created_at"], page[0]["id"])
    assert paged == whole
    assert [r["id"] for r in store.sessions(limit=2, before=(7.0, "c3"))] == ["b2", "a1"]
    assert {"ix_sessions_created_at", "ix_sessions_status_created_at"} <= {
        ix["name"] for ix in inspect(engine).get_indexes("sessions")}
    assert [r["id"] for r in store.sessions(status=["created"], limit=2, before=(7.0, "c3"))] == ["b2", "a1"]


@pytest.mark.parametrize("n", [99, 100, 101, 250])
def test_batches_of_every_size_store_each_row_once_in_order(engine: Engine, writer: BatchWriter, n: int) -> None:
    """Rows go ``store.writer.ROWS_PER_STATEMENT`` (100) to an INSERT and the rest one by one: ``n`` rows of each
    shape (full, without node and parent, with a node only), interleaved by seq, are all stored once, with their own
    values (a row's values never shifted into its neighbour's columns), whatever ``n`` leaves over; a duplicate key
    in the last, partial statement rolls back the full ones before it."""
    assert ROWS_PER_STATEMENT == 100
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    b.add("s1", "session.created", CREATED, ts=1.0)
    b.commit(writer)
    full = [("s1", 2 + 3 * i, float(i), "custom", "r", 1 + 3 * i, f"n{i}", i, f'{{"i":{i},"shape":"full"}}')
            for i in range(n)]
    plain = [("s1", 3 + 3 * i, float(i), "log", "r", 2 + 3 * i, f'{{"i":{i},"shape":"plain"}}') for i in range(n)]
    noded = [("s1", 4 + 3 * i, float(i), "output", "r", 3 + 3 * i, f"m{i}", f'{{"i":{i},"shape":"noded"}}')
             for i in range(n)]
    cursors["s1"].last_seq, cursors["s1"].runner_seq = 1 + 3 * n, 3 * n
    writer.commit(full, RowChanges(), cursors, plain, noded)  # type: ignore[arg-type]
    events = Store(engine).events("s1", limit=5000)
    assert [e["seq"] for e in events] == list(range(1, 2 + 3 * n))
    for e in events[1:]:
        i, shape = e["payload"]["i"], e["payload"]["shape"]
        want = {"full": (2 + 3 * i, "custom", f"n{i}", i), "plain": (3 + 3 * i, "log", None, None),
                "noded": (4 + 3 * i, "output", f"m{i}", None)}[shape]
        assert (e["seq"], e["kind"], e["node_id"], e["parent"]) == want and e["ts"] == float(i)
        assert e["src_seq"] == e["seq"] - 1
    more = [("s1", 2 + 3 * n + i, 1.0, "log", "r", 1 + 3 * n + i, "{}") for i in range(150)]
    more.append(more[-1])  # the same key twice, in the statement after the first 100 rows
    with pytest.raises(Exception):  # noqa: B017, PT011 - any integrity error
        writer.commit([], RowChanges(), cursors, more)
    assert len(Store(engine).events("s1", limit=5000)) == 1 + 3 * n


def test_failed_commit_is_rolled_back(engine: Engine, writer: BatchWriter) -> None:
    """A batch that fails (duplicate event seq) writes nothing, and the writer stays usable."""
    cursors: dict[str, SessionCursor] = {}
    _run_session(writer, cursors)
    b = Batch(cursors)
    b.add("s1", "custom", {"name": "x"})
    b.rows.append(b.rows[0])  # same (session_id, seq) twice
    with pytest.raises(Exception):  # noqa: B017 - any DB integrity error
        b.commit(writer)
    assert len(Store(engine).events("s1")) == 8
    b = Batch(cursors)
    b.add("s1", "custom", {"name": "y"})
    b.commit(writer)
    assert Store(engine).events("s1", since=8)[0]["payload"] == {"name": "y"}


def test_load_cursor_restores_seq_marks_and_status(engine: Engine, writer: BatchWriter) -> None:
    """load_cursor rebuilds last_seq, runner_seq, status, outcome and peaks from the row; None if unknown."""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    b.add("s1", "session.created", CREATED)
    b.add("s1", "session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
    b.add("s1", "session.started", {"pid": 1, "workdir": "/w"}, src="r")
    b.add("s1", "output", {"stream": "stdout", "text": "hi"}, src="r")
    b.add("s1", "resource.sample", {"rss": 10, "cpu_percent": 1.0, "num_procs": 1, "peak_rss": 99,
                                    "peak_cpu_percent": 12.5})
    b.commit(writer)
    cur = writer.load_cursor("s1")
    assert cur is not None
    assert (cur.last_seq, cur.runner_seq, cur.status) == (5, 2, "running")
    assert (cur.peak_rss, cur.peak_cpu_percent) == (99, 12.5)
    assert writer.load_cursor("missing") is None


def test_first_events_and_session_ids_in_one_query_each(engine: Engine, writer: BatchWriter) -> None:
    """first_events gives, for many sessions at once, the payload of the first event of each kind asked for (a
    later event of the same kind does not replace it; a kind a session lacks is absent); session_ids lists every
    session. (What a starting daemon needs to re-queue sessions and sweep orphaned directories.)"""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    for sid in ("s1", "s2"):
        b.add(sid, "session.created", CREATED | {"name": sid})
    b.add("s1", "session.queued", {"position": 1, "priority": 5, "reason": "queued"})
    b.add("s1", "session.queued", {"position": 1, "priority": 9, "reason": "queued"})
    b.commit(writer)
    store = Store(engine)
    got = store.first_events(["s1", "s2", "nope"], ["session.queued", "session.created"])
    assert set(got) == {("s1", "session.queued"), ("s1", "session.created"), ("s2", "session.created")}
    assert got[("s1", "session.queued")]["priority"] == 5 and got[("s2", "session.created")]["name"] == "s2"
    assert store.first_events([], ["session.created"]) == {}
    assert store.session_ids() == {"s1", "s2"}


def test_load_cursor_carries_budget_and_output_cap(engine: Engine, writer: BatchWriter) -> None:
    """The limits ingest enforces after a restart come with the cursor from the one row read: the budget and the
    output cap (the backstop of daemon/outputcap.py does not read the row again); no cap stored is None."""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    b.add("s1", "session.created", CREATED | {"limits": {"budget": 0.5, "output": 4096}})
    b.add("s2", "session.created", CREATED | {"workdir": "/w/s2"})
    b.commit(writer)
    one, two = writer.load_cursor("s1"), writer.load_cursor("s2")
    assert one is not None and (one.budget, one.output_cap) == (0.5, 4096)
    assert two is not None and (two.budget, two.output_cap) == (None, None)


def test_a_budget_given_or_lifted_at_resume_is_the_sessions_budget(engine: Engine, writer: BatchWriter) -> None:
    """``session.resumed`` with a new budget rewrites ``limits.budget`` (what `labd show` and `labd cost` print, and
    what a later resume of the ended session starts from) and the budget ingest checks; ``budget_lifted`` (resumed
    without one after a budget pause) clears it; a plain resume leaves it. A restart's cursor has the new one."""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    for sid in ("s1", "s2", "s3"):
        b.add(sid, "session.created", CREATED | {"limits": {"memory": 2**30, "budget": 0.5, "budget_action": "pause"}})
        b.add(sid, "session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
        b.add(sid, "session.started", {"pid": 1, "workdir": "/w"}, src="r")
        b.add(sid, "session.paused", {"by": "budget", "reason": "budget reached"}, src="r")
    b.add("s1", "session.resumed", {"by": "client", "budget": 5.0}, src="r")
    b.add("s2", "session.resumed", {"by": "client", "budget_lifted": True}, src="r")
    b.add("s3", "session.resumed", {"by": "client"}, src="r")
    b.commit(writer)
    store = Store(engine)
    got = {sid: store.session(sid)["limits"] for sid in ("s1", "s2", "s3")}  # type: ignore[index]
    assert got["s1"] == {"memory": 2**30, "budget": 5.0, "budget_action": "pause"}
    assert got["s2"]["budget"] is None and got["s2"]["memory"] == 2**30
    assert got["s3"]["budget"] == 0.5
    assert [cursors[sid].budget for sid in ("s1", "s2", "s3")] == [5.0, None, 0.5]
    one = writer.load_cursor("s1")
    assert one is not None and one.budget == 5.0 and one.limits["budget"] == 5.0


def test_a_budget_the_runner_refuses_gives_the_reason_the_daemons_stop_gives(engine: Engine,
                                                                              writer: BatchWriter) -> None:
    """The runner's refusal of an LLM call over the budget (``budget.exceeded``, action stop) ends the session with
    the reason the daemon's budget stop (``limit.exceeded``) gives, not the workflow's exception: which of the two
    catches the breach first is a race (CI saw both). A budget pause is no end and leaves the reason alone."""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    for sid in ("runner", "daemon", "pause"):
        b.add(sid, "session.created", CREATED | {"limits": {"budget": 0.0005}})
        b.add(sid, "session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
        b.add(sid, "session.started", {"pid": 1, "workdir": "/w"}, src="r")
    b.add("runner", "budget.exceeded", {"spent": 0.000596, "budget": 0.0005, "action": "stop", "agent": "engineer",
                                        "reason": "budget reached"}, src="r")
    b.add("runner", "session.finished", {"outcome": "failed", "error": "BudgetExceeded: budget reached"}, src="r")
    b.add("daemon", "limit.exceeded", {"limit": "budget", "measured": 0.000596, "max": 0.0005, "unit": "USD",
                                       "action": "stop"})
    b.add("pause", "budget.exceeded", {"spent": 0.000596, "budget": 0.0005, "action": "pause", "agent": "engineer",
                                       "reason": "budget reached"}, src="r")
    b.add("pause", "session.finished", {"outcome": "failed", "error": "ValueError: x"}, src="r")
    for sid in ("runner", "daemon", "pause"):
        b.add(sid, "session.ended", {"ended_by": "runner", "exit_code": 1})
    b.commit(writer)
    store = Store(engine)
    reasons = {sid: store.session(sid)["reason"] for sid in ("runner", "daemon", "pause")}  # type: ignore[index]
    assert reasons["runner"] == reasons["daemon"] == "stopped: budget $0.000596 > limit $0.000500"
    assert reasons["pause"] == "workflow failed: ValueError: x"


def test_restored_cursor_finalizes_like_the_original(engine: Engine, writer: BatchWriter) -> None:
    """After a daemon restart between the runner's failure report and its exit, the end reason still
    carries the workflow's error (not the row's last transition reason, 'runner started')."""
    cursors: dict[str, SessionCursor] = {}
    b = Batch(cursors)
    b.add("s1", "session.created", CREATED)
    b.add("s1", "session.launched", {"pid": 1, "create_time": 1.0, "launcher": "x"})
    b.add("s1", "session.started", {"pid": 1, "workdir": "/w"}, src="r")
    b.add("s1", "session.finished", {"outcome": "failed", "error": "ValueError: boom"}, src="r")
    b.commit(writer)
    restored = writer.load_cursor("s1")
    assert restored is not None and restored.outcome == "failed"
    ended = {"ended_by": "monitor", "exit_code": 1}
    apply(restored, 5, 10.0, "session.ended", "d", None, ended, RowChanges())
    assert (ended["status"], ended["reason"]) == ("failed", "workflow failed: ValueError: boom")


def test_delete_sessions_removes_every_row_and_only_theirs(engine: Engine, writer: BatchWriter) -> None:
    """Retention deletes every row of the named sessions in every per-session table, and nothing of others;
    prune_candidates picks terminal sessions by end time and status."""
    from sqlalchemy import func, select

    from labd.store.retention import prune_candidates
    from labd.store.schema import metadata

    cursors: dict[str, SessionCursor] = {}
    _run_session(writer, cursors, "old", base_ts=0.0)
    _run_session(writer, cursors, "new", base_ts=5000.0)
    assert prune_candidates(engine, ended_before=1000.0) == ["old"]
    assert prune_candidates(engine, ended_before=1e12, statuses=["failed"]) == []
    counts = writer.delete_sessions(["old"])
    assert counts["sessions"] == 1 and counts["events"] == 8
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            col = table.c.get("session_id") if "session_id" in table.c else table.c.get("id")
            if col is None:
                continue
            assert conn.execute(select(func.count()).where(col == "old")).scalar() == 0, table.name
        assert conn.execute(select(func.count()).select_from(metadata.tables["events"])).scalar() == 8
    assert Store(engine).session("new") is not None


def _cost_rows(eng: Engine) -> dict[tuple[str, str, int], tuple[int, int, int, float]]:
    from sqlalchemy import select

    from labd.store.schema import cost_sums

    with eng.connect() as conn:
        return {(r[0], r[1], r[2]): (r[3], r[4], r[5], r[6]) for r in conn.execute(select(cost_sums))}


def _call(seq: int, ts: float, model: str, cost: float = 0.25) -> dict[str, Any]:
    return {"session_id": "s1", "seq": seq, "ts": ts, "node_id": None, "agent": "a", "model": model,
            "prompt_tokens": 10, "completion_tokens": 2, "cost": cost, "offline": False}


def test_cost_sums_add_up_across_commits_and_days(engine: Engine, writer: BatchWriter) -> None:
    """The writer adds each commit's calls to the sums of their session, model and UTC day (two commits on one key
    add up, a call a second past midnight counts in the next day); ``cost_summary`` with a ``since`` within a day
    sums that day's part from the calls and the later days from the sums."""
    import time as _time

    from sqlalchemy import insert

    from labd.store.schema import sessions

    day = 20_000 * 86400.0
    with engine.begin() as conn:
        conn.execute(insert(sessions).values(id="s1", name="s1", workflow="w", status="completed", created_at=day,
                                             params="{}", limits="{}", workdir="/tmp", tags="{}"))
    for calls in ([_call(1, day + 10, "m"), _call(2, day + 20, "m")], [_call(3, day + 30, "m"),
                                                                         _call(4, day + 86400, "m")]):
        with engine.begin() as conn:
            writer._insert(conn, "cost_records", calls)
            writer._add_cost_sums(conn, calls)
    assert _cost_rows(engine) == {("s1", "m", 20_000): (3, 30, 6, 0.75), ("s1", "m", 20_001): (1, 10, 2, 0.25)}
    summary = Store(engine).cost_summary(by="day", since=day + 15)  # two of the first day's calls, and the next
    assert [(g["day"], g["calls"]) for g in summary["groups"]] == [
        (_time.strftime("%Y-%m-%d", _time.gmtime(day)), 2), (_time.strftime("%Y-%m-%d", _time.gmtime(day + 86400)), 1)]


def test_migration_0012_sums_the_calls_recorded_before(engine: Engine) -> None:
    """A store written before cost_sums (revision 0011) is migrated with its calls summed per session, model and day,
    a model's name over 200 characters keyed cut with a digest, merged with a call naming that key itself (as the
    writer merges them; the migration failed on the duplicate key), and ``migrate`` says first that there is a
    migration to run (the daemon then asks systemd for time), and not when there is none."""
    from sqlalchemy import insert

    from labd.store.schema import cost_records, model_key

    downgrade_to(engine, "0011_record_counts")
    long = "L" * 300
    day = 20_000 * 86400.0
    with engine.begin() as conn:
        conn.execute(insert(cost_records), [_call(1, day + 1, long), _call(2, day + 2, model_key(long)),
                                            _call(3, day + 3, "m"), _call(4, day + 4, "m", 0.5)])
    told: list[int] = []
    migrate(engine, on_pending=lambda: told.append(1))
    assert told == [1]
    assert _cost_rows(engine) == {("s1", model_key(long), 20_000): (2, 20, 4, 0.5),
                                  ("s1", "m", 20_000): (2, 20, 4, 0.75)}
    migrate(engine, on_pending=lambda: told.append(2))
    assert told == [1]


def test_a_skill_version_number_is_never_given_twice(engine: Engine, writer: BatchWriter) -> None:
    """Versions of a skill saved after all its versions were deleted go on from the last number (a session records
    the ``{name, version}`` it ran: after `labd skills rm`, ``NAME@1`` named another skill); a store from before
    (revision 0013) is migrated with the numbers its skills reached, or its sessions ran."""
    from labd.store.skills import get_skill

    doc = {"name": "fit", "workflow": "demo.count"}
    assert [writer.save_skill(doc)["version"] for _ in range(2)] == [1, 2]
    assert writer.delete_skill("fit")["versions"] == 2
    assert writer.save_skill({**doc, "workflow": "demo.sleep"})["version"] == 3
    assert get_skill(engine, "fit")["workflow"] == "demo.sleep"
    writer.save_skill({"name": "other", "workflow": "demo.count"})
    downgrade_to(engine, "0013_files_path_b64")
    # a skill whose versions were all deleted before the migration, but which a session ran at version 7 (recorded
    # by this labd's writer, which counts sessions in store_meta: the table stands in for the count meanwhile)
    from labd.store.schema import store_meta

    store_meta.create(engine)
    _run_session(writer, {}, sid="s7", created={"skill": {"name": "gone", "version": 7, "origin_session": None}})
    store_meta.drop(engine)
    migrate(engine)
    writer.delete_skill("fit")
    writer.delete_skill("other")
    assert writer.save_skill(doc)["version"] == 4 and writer.save_skill({**doc, "name": "other"})["version"] == 2
    assert writer.save_skill({**doc, "name": "gone"})["version"] == 8


def test_a_keyed_skill_save_is_stored_once_and_its_key_survives_the_migration(engine: Engine,
                                                                                writer: BatchWriter) -> None:
    """A save with an idempotency key stores one version: the same key and digest again answers that version
    (``replayed``), the same key with another digest is ``idempotency_conflict`` and stores nothing, and a save
    without a key is a new version as before. A store from before the keys (revision 0016) keeps its skills and takes
    keyed saves after the migration, on SQLite and PostgreSQL."""
    from labd.store.skills import SkillError, get_skill

    doc = {"name": "keyed", "workflow": "demo.count"}
    writer.save_skill(doc)
    downgrade_to(engine, "0016_sessions_created_index")
    migrate(engine)
    assert get_skill(engine, "keyed")["version"] == 1  # kept through the migration
    assert writer.save_skill(doc, "k1", "d1") == {"name": "keyed", "version": 2}
    assert writer.save_skill(doc, "k1", "d1") == {"name": "keyed", "version": 2, "replayed": True}
    with pytest.raises(SkillError) as err:
        writer.save_skill({**doc, "name": "other"}, "k1", "d2")
    assert err.value.code == "idempotency_conflict" and err.value.details == {"name": "keyed", "version": 2}
    with pytest.raises(SkillError):
        get_skill(engine, "other")
    assert writer.save_skill(doc) == {"name": "keyed", "version": 3}
    assert writer.save_skill({**doc, "name": "other"}, "k2", "d2") == {"name": "other", "version": 1}


def test_the_store_counts_every_session_it_ever_recorded(engine: Engine, writer: BatchWriter) -> None:
    """``store_meta`` ``sessions_created`` counts each session inserted, in the same transaction, and a deletion does
    not subtract (a home that saw more than its store has knows the store went back: daemon/store_identity.py); a
    store from before (revision 0014) starts from the sessions it holds."""
    from labd.store.meta import sessions_created

    counted: list[int] = []
    writer.on_created = counted.append
    for sid in ("a1", "a2", "a3"):
        _run_session(writer, {}, sid=sid)
    assert sessions_created(engine) == 3 and sum(counted) == 3
    writer.delete_sessions(["a1"])
    assert sessions_created(engine) == 3
    downgrade_to(engine, "0014_skill_names")
    migrate(engine)
    assert sessions_created(engine) == 2
