"""The search index reads only what can have grown: live sessions and those that ended since its previous
scan, with a full scan now and then; whatever the timing, every session's documents are indexed once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, insert, update
from sqlalchemy.engine import Connection

from labd.store import growth, search
from labd.store.db import migrate, open_engine
from labd.store.schema import events, sessions
from labd.store.search import SearchIndex


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


def _session(eng: Engine, sid: str, words: str, *, status: str = "running", ended_at: float | None = None) -> None:
    """A session row with one step.started event named ``words``."""
    now = time.time()
    with eng.begin() as conn:
        conn.execute(insert(sessions).values(id=sid, name=sid, workflow="demo.count", params="{}", limits="{}",
                                             workdir="/w", status=status, created_at=now, ended_at=ended_at,
                                             last_seq=1, runner_seq=0))
        conn.execute(insert(events).values(session_id=sid, seq=1, ts=now, kind="step.started", src="r", src_seq=1,
                                           node_id="n1", payload=orjson.dumps({"name": words}).decode()))


def _grow(eng: Engine, sid: str, seq: int, words: str, **values: object) -> None:
    with eng.begin() as conn:
        conn.execute(insert(events).values(session_id=sid, seq=seq, ts=time.time(), kind="step.started", src="r",
                                           src_seq=seq, node_id=f"n{seq}",
                                           payload=orjson.dumps({"name": words}).decode()))
        conn.execute(update(sessions).where(sessions.c.id == sid).values(last_seq=seq, **values))


def _hits(index: SearchIndex, text: str) -> list[tuple[str, int]]:
    return sorted((h["session_id"], h["seq"]) for h in index.search(text))


def test_incremental_scans_index_live_growth_and_sessions_that_lived_between_two_scans(engine: Engine,
                                                                                        tmp_path: Path) -> None:
    """After the first (full) scan, a live session's new events are indexed; a session created and ended between
    two scans is indexed too; nothing is indexed twice."""
    index = SearchIndex(tmp_path / "search.db", engine)
    _session(engine, "old", "ancient alpha", status="completed", ended_at=time.time() - 3600)
    _session(engine, "live", "live alpha")
    assert index.update() == 2
    _grow(engine, "live", 2, "live beta")
    _session(engine, "brief", "brief beta", status="completed", ended_at=time.time())
    assert index.update() == 2
    assert _hits(index, "beta") == [("brief", 1), ("live", 2)]
    assert index.update() == 0
    assert _hits(index, "alpha") == [("live", 1), ("old", 1)]
    index.close()


def test_between_full_scans_long_ended_sessions_are_not_read(engine: Engine, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With 300 sessions that ended an hour ago, an incremental scan fetches only the live one's row; the next
    full scan (FULL_SCAN_EVERY) still catches a change to an old session (e.g. events the daemon appended)."""
    for i in range(300):
        _session(engine, f"s{i:03}", f"word{i}", status="completed", ended_at=time.time() - 3600)
    _session(engine, "live", "gamma")
    index = SearchIndex(tmp_path / "search.db", engine)
    assert index.update() == 301
    rows_seen: list[int] = []
    real_update = SearchIndex.update
    orig_execute = Connection.execute

    def spy(self, statement, *a, **kw):  # type: ignore[no-untyped-def]
        result = orig_execute(self, statement, *a, **kw)
        if [c.name for c in getattr(statement, "selected_columns", [])] == ["id", "last_seq"]:
            rows = result.all()
            rows_seen.append(len(rows))
            return _Rows(rows)
        return result

    monkeypatch.setattr(Connection, "execute", spy)
    _grow(engine, "live", 2, "delta")
    assert real_update(index) == 1
    assert rows_seen == [1]
    _grow(engine, "s007", 2, "epsilon")  # an old session changed behind the incremental scan's back
    monkeypatch.setattr(growth, "FULL_SCAN_EVERY", 0.0)
    assert real_update(index) == 1
    assert rows_seen[-1] == 301
    assert _hits(index, "epsilon") == [("s007", 2)]
    index.close()


class _Rows:
    """A consumed result handed back to the caller."""

    def __init__(self, rows: list) -> None:  # type: ignore[type-arg]
        self._rows = rows

    def all(self) -> list:  # type: ignore[type-arg]
        return self._rows


def _tick(eng: Engine, sid: str, seq: int) -> None:
    """A bulk ``custom`` event (never indexed) at ``seq``."""
    with eng.begin() as conn:
        conn.execute(insert(events).values(session_id=sid, seq=seq, ts=time.time(), kind="custom", src="r",
                                           src_seq=seq, payload=orjson.dumps({"name": "tick", "data": seq}).decode()))
        conn.execute(update(sessions).where(sessions.c.id == sid).values(last_seq=seq))


def _event_reads(engine: Engine) -> list[int]:
    """Counts the indexer's reads of the events table (appends one per statement)."""
    from sqlalchemy import event as sa_event

    reads: list[int] = []

    @sa_event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM events" in statement:
            reads.append(1)
    return reads


def test_hints_spare_reading_rows_that_hold_nothing_indexable(engine: Engine, tmp_path: Path) -> None:
    """With ingest's hints, a session whose new rows (written by this daemon) are all bulk kinds is not read back:
    only its mark moves. A row of an indexable kind staged among them is read and indexed, and then the session's
    bulk rows are skipped again."""
    hints = search.IndexHints()
    _session(engine, "bulk", "bulk alpha")
    index = SearchIndex(tmp_path / "search.db", engine, hints)
    assert index.update() == 1  # written before this process's hints began: read
    reads = _event_reads(engine)
    hints.writing("bulk", 2)
    for seq in range(2, 200):
        _tick(engine, "bulk", seq)
    hints.committed()  # as ingest says after each commit
    assert index.update() == 0
    assert reads == []  # the 198 ticks were not read back
    hints.staged("bulk", 200, "step.started")
    _grow(engine, "bulk", 200, "bulk omega")
    hints.committed()
    assert index.update() == 1
    assert len(reads) == 1
    assert _hits(index, "omega") == [("bulk", 200)]
    hints.writing("bulk", 201)
    for seq in range(201, 250):
        _tick(engine, "bulk", seq)
    hints.committed()
    assert index.update() == 0
    assert len(reads) == 1
    # the mark moved over the skipped rows: a restart will not read them either
    assert index._db.execute("SELECT seq FROM indexed WHERE session_id = 'bulk'").fetchone() == (249,)  # noqa: SLF001
    index.close()


def test_hints_never_hide_rows_written_before_them_or_dropped(engine: Engine, tmp_path: Path) -> None:
    """Rows an earlier daemon wrote (before this process's first seq for the session) are read even though the
    hints say nothing indexable came since; so is a session whose hints were dropped at the bound (a row staged
    after the drop starts the session's hints again, from that row)."""
    hints = search.IndexHints(limit=2)
    _session(engine, "a", "first alpha")
    _grow(engine, "a", 2, "earlier beta")  # an earlier daemon's row
    hints.writing("a", 3)  # this daemon writes from seq 3 on
    _tick(engine, "a", 3)
    index = SearchIndex(tmp_path / "search.db", engine, hints)
    assert index.update() == 2
    assert _hits(index, "beta") == [("a", 2)]
    hints.writing("b", 1)
    hints.writing("c", 1)  # past the bound of 2: every hint is dropped
    assert not hints.nothing_after("a", 3)
    hints.staged("a", 4, "agent.message")  # starts "a" again, from seq 4, with an indexable row
    with engine.begin() as conn:
        conn.execute(insert(events).values(session_id="a", seq=4, ts=time.time(), kind="agent.message", src="r",
                                           src_seq=4, node_id="n4",
                                           payload=orjson.dumps({"agent": "x", "content": "gamma"}).decode()))
        conn.execute(update(sessions).where(sessions.c.id == "a").values(last_seq=4))
    hints.committed()
    assert index.update() == 1
    assert _hits(index, "gamma") == [("a", 4)]
    assert hints.nothing_after("a", 4)
    index.forget(["a"])
    assert not hints.nothing_after("a", 4)
    index.close()


def test_a_session_deleted_while_an_update_read_it_does_not_come_back(engine: Engine, tmp_path: Path) -> None:
    """``labd rm`` (or retention) deletes a session and forgets it in the index while the indexer's update has read
    its events but not yet committed them: the update must not write them back (the deleted session's hits would
    come back for good, since nothing forgets it again). Made deterministic by forgetting at the commit."""
    from sqlalchemy import delete

    index = SearchIndex(tmp_path / "search.db", engine)
    _session(engine, "gone", "kinkajou gone")
    _session(engine, "kept", "kinkajou kept")
    real_commit = index._commit

    def commit_after_a_deletion(docs: list, done: list) -> int:  # type: ignore[type-arg]
        with engine.begin() as conn:  # the deletion commits in the store, then the daemon forgets it
            conn.execute(delete(events).where(events.c.session_id == "gone"))
            conn.execute(delete(sessions).where(sessions.c.id == "gone"))
        index.forget(["gone"])
        return real_commit(docs, done)

    index._commit = commit_after_a_deletion  # type: ignore[method-assign]
    index.update()
    index._commit = real_commit  # type: ignore[method-assign]
    assert _hits(index, "kinkajou") == [("kept", 1)]
    index.update()
    assert _hits(index, "kinkajou") == [("kept", 1)]
    index.close()


def test_a_deletion_whose_forget_never_ran_is_dropped_at_the_next_start(engine: Engine, tmp_path: Path) -> None:
    """The daemon was killed after a deletion's commit and before the index dropped the session: the next daemon's
    index (a new ``SearchIndex`` on the same file) drops it at its first update, a full scan, so the deleted
    session's text is not searchable for good; the sessions the store still has keep their hits."""
    from sqlalchemy import delete

    index = SearchIndex(tmp_path / "search.db", engine)
    _session(engine, "gone", "quokka gone")
    _session(engine, "kept", "quokka kept")
    index.update()
    assert sorted(_hits(index, "quokka")) == [("gone", 1), ("kept", 1)]
    index.close()
    with engine.begin() as conn:  # the deletion commits; the daemon dies before its forget
        conn.execute(delete(events).where(events.c.session_id == "gone"))
        conn.execute(delete(sessions).where(sessions.c.id == "gone"))
    again = SearchIndex(tmp_path / "search.db", engine)
    again.update()
    assert _hits(again, "quokka") == [("kept", 1)]
    assert again._db.execute("SELECT session_id FROM indexed").fetchall() == [("kept",)]
    again.close()


def _event(eng: Engine, sid: str, seq: int, kind: str, payload: dict[str, object]) -> None:
    with eng.begin() as conn:
        conn.execute(insert(events).values(session_id=sid, seq=seq, ts=time.time(), kind=kind, src="r", src_seq=seq,
                                           node_id=f"n{seq}" if kind.startswith("step.") else None,
                                           payload=orjson.dumps(payload).decode()))
        conn.execute(update(sessions).where(sessions.c.id == sid).values(last_seq=seq))


def _failed(eng: Engine, sid: str) -> None:
    """A session whose step failed with a ZeroDivisionError, then the session with its traceback."""
    _session(eng, sid, "divide the data")
    _event(eng, sid, 2, "step.finished", {"name": "divide", "status": "failed", "duration": 0.1,
                                          "error": "ZeroDivisionError: division by zero"})
    _event(eng, sid, 3, "session.finished", {"outcome": "failed", "error": "ZeroDivisionError: division by zero",
                                             "traceback": "File \"flows.py\", line 7, in quotient"})


def test_errors_of_failed_steps_and_sessions_are_found(engine: Engine, tmp_path: Path) -> None:
    """A failed step's error and a failed session's error and traceback are documents of type ``error``: searching
    the exception's name (or a word of the traceback) finds them; a step that succeeded makes no error document."""
    index = SearchIndex(tmp_path / "search.db", engine)
    _failed(engine, "s1")
    _event(engine, "s1", 4, "step.finished", {"name": "fine", "status": "completed", "duration": 0.1})
    _event(engine, "s1", 5, "session.ended", {"ended_by": "runner", "status": "failed",  # said already: no 2nd doc
                                              "reason": "workflow failed: ZeroDivisionError: division by zero"})
    _session(engine, "s2", "crashing")  # its runner crashed: no session.finished, the reason says it all
    _event(engine, "s2", 2, "session.ended", {"ended_by": "runner", "status": "failed", "reason": "runner exited "
                                              "with code 1 before reporting an outcome: TypeError: surrogates"})
    _session(engine, "s3", "stopped")  # stopped by its user: no error
    _event(engine, "s3", 2, "session.ended", {"ended_by": "sigterm", "status": "cancelled", "reason": "stopped by u"})
    index.update()
    hits = index.search("ZeroDivisionError")
    assert sorted((h["type"], h["seq"]) for h in hits) == [("error", 2), ("error", 3)]
    assert [(h["session_id"], h["title"]) for h in index.search("surrogates", types=["error"])] == [
        ("s2", "session failed")]
    assert index.search("stopped", types=["error"]) == []
    assert [h["seq"] for h in index.search("quotient")] == [3]
    assert [h["type"] for h in index.search("division", types=["error"])] == ["error", "error"]
    index.close()


def test_an_index_made_before_error_documents_gets_them_once(engine: Engine, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An index of version 1 (no error documents) that had indexed failed sessions gets their errors at its next
    update, once: a backfill a stop interrupted is started again without leaving a document twice, and events
    beyond a session's mark are indexed by the update as usual (not twice either)."""
    path = tmp_path / "search.db"
    index = SearchIndex(path, engine)
    made = search._doc
    monkeypatch.setattr(search, "_doc", lambda kind, p: (lambda d: None if d and d[0] == "error" else d)(made(kind, p)))
    _failed(engine, "old")
    index.update()  # indexed as a version-1 index would: no error documents
    monkeypatch.undo()
    index.close()
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 1")
    # what an interrupted backfill leaves: one error document, the version still 1
    db.execute("INSERT INTO docs (title, body, type, session_id, seq, node_id, ts) VALUES "
               "('divide', 'ZeroDivisionError', 'error', 'old', 2, 'n2', 0)")
    db.commit()
    db.close()
    before = SearchIndex(path, engine)
    assert [h["seq"] for h in before.search("ZeroDivisionError")] == [2]  # only the leftover, before the update
    before.close()
    _failed(engine, "new")  # beyond any mark: the update's to index
    index = SearchIndex(path, engine)
    index.update()
    found = sorted((h["session_id"], h["seq"]) for h in index.search("ZeroDivisionError"))
    assert found == [("new", 2), ("new", 3), ("old", 2), ("old", 3)]
    index.update()
    assert len(index.search("ZeroDivisionError")) == 4
    index.close()
    again = SearchIndex(path, engine)  # version 2 now: no second backfill
    again.update()
    assert len(again.search("ZeroDivisionError")) == 4
    again.close()


def test_an_index_reads_nothing_while_ingest_commits_nothing(engine: Engine, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With ingest's hints, an update while nothing was committed since the last complete one reads no store row
    (500 idle sessions: a query a second for nothing); the next commit is indexed at the next update, and the full
    scan still comes every FULL_SCAN_EVERY seconds."""
    from sqlalchemy import event

    hints = search.IndexHints()
    _session(engine, "live", "live alpha")
    index = SearchIndex(tmp_path / "search.db", engine, hints)
    hints.committed()
    assert index.update() == 1
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(5):
        assert index.update() == 0
    assert statements == []
    _grow(engine, "live", 2, "live beta")
    hints.committed()
    assert index.update() == 1
    assert _hits(index, "beta") == [("live", 2)]
    statements.clear()
    clock = time.monotonic() + growth.FULL_SCAN_EVERY + 1
    monkeypatch.setattr(growth.time, "monotonic", lambda: clock)
    assert index.update() == 0
    assert statements, "the periodic full scan was skipped"
    index.close()
