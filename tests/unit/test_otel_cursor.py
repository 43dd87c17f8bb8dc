"""The OpenTelemetry exporter's cursor (daemon/otel_cursor.py, daemon/otel_export.py): where each session's export
stopped, kept for as long as the store keeps the session."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from labd.daemon.otel_export import OtelExporter
from labd.store.db import migrate, open_engine
from labd.store.projections import SessionCursor
from labd.store.schema import sessions
from labd.store.writer import BatchWriter
from tests.unit.test_otel_clamp import FakeCollector
from tests.unit.test_store import CREATED, Batch

ENDED = {"ended_by": "runner", "exit_code": 0, "status": "completed"}
CODE = {"agent": "engineer", "language": "python", "code": "x = 1", "exit_code": 0, "output": "", "duration": 0.5}


def _exporter(tmp_path: Path, engine: Any) -> tuple[OtelExporter, FakeCollector]:
    exporter = OtelExporter(engine, "http://127.0.0.1:9", tmp_path / "otel-export.db")
    fake = FakeCollector()
    exporter.http = fake  # type: ignore[assignment]
    return exporter, fake


def test_a_session_resumed_after_it_ended_and_was_exported_is_exported_again(tmp_path: Path) -> None:
    """A session ends and is exported; a new exporter (a daemon restart) then sees it resumed: its second run's
    spans are sent, and only those (the first run's are not sent again), its second end a ``session`` span of its
    own. The JSON cursor forgot an ended session and found sessions by creation time: the second run was lost."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    writer = BatchWriter(engine)
    cursors: dict[str, SessionCursor] = {}
    exporter, fake = _exporter(tmp_path, engine)
    try:
        b = Batch(cursors)
        b.add("s1", "session.created", CREATED, ts=1000.0)
        b.add("s1", "code.execution", CODE, src="r", ts=1001.0)
        b.add("s1", "session.ended", ENDED, ts=1002.0)
        b.commit(writer)
        later = Batch(cursors)  # a session created later, exported and ended first
        later.add("s2", "session.created", CREATED, ts=2000.0)
        later.add("s2", "session.ended", ENDED, ts=2001.0)
        later.commit(writer)
        assert exporter.export_pass()
        assert sorted(s.name for s in fake.sent) == ["run_code", "session demo.count", "session demo.count"]
        exporter.cursor.close()
        again, fake = _exporter(tmp_path, engine)  # a restart
        assert again.export_pass() and fake.sent == []  # nothing twice
        now = time.time()  # resumed now (not a full scan: found as a session that ended since the last pass)
        b = Batch(cursors)  # resumed: runs on, ends again
        b.add("s1", "session.continued", {"by": "client", "reason": "resume", "from_status": "completed"}, ts=now)
        b.add("s1", "code.execution", CODE, src="r", ts=now + 0.1)
        b.add("s1", "session.ended", ENDED, ts=now + 0.2)
        b.commit(writer)
        assert again.export_pass()
        assert sorted(s.name for s in fake.sent) == ["run_code", "session demo.count"]
        assert again.cursor.get("s1") == 6
        again.cursor.close()
    finally:
        writer.close()
        engine.dispose()


def test_an_old_cursor_file_is_taken_over_and_deleted_sessions_are_dropped(tmp_path: Path) -> None:
    """An ``otel-export.json`` of the older form: sessions created before its ``done_before`` count as exported,
    one listed in it goes on from its seq; the file is renamed. A session the store no longer has leaves the
    cursor at the next full scan."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    writer = BatchWriter(engine)
    cursors: dict[str, SessionCursor] = {}
    try:
        for sid, ts in (("old", 1000.0), ("mid", 2000.0)):
            b = Batch(cursors)
            b.add(sid, "session.created", CREATED, ts=ts)
            b.add(sid, "code.execution", CODE, src="r", ts=ts + 1)
            b.add(sid, "session.ended", ENDED, ts=ts + 2)
            b.commit(writer)
        with engine.begin() as conn:  # created_at as the events say
            conn.execute(update(sessions).where(sessions.c.id == "old").values(created_at=1000.0))
            conn.execute(update(sessions).where(sessions.c.id == "mid").values(created_at=2000.0))
        legacy = tmp_path / "otel-export.json"
        legacy.write_text(json.dumps({"done_before": 1500.0, "sessions": {"mid": 2}}))
        exporter, fake = _exporter(tmp_path, engine)
        assert not legacy.exists() and (tmp_path / "otel-export.json.migrated").exists()
        assert exporter.export_pass()
        assert [s.name for s in fake.sent] == ["session demo.count"]  # mid's end; old's spans and mid's run: sent
        assert exporter.cursor.known() == {"old", "mid"}
        from sqlalchemy import delete

        with engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.id == "old"))
        exporter.scan.again()  # the next pass is a full scan (one a minute)
        assert exporter.export_pass()
        assert exporter.cursor.known() == {"mid"}
        exporter.cursor.close()
    finally:
        writer.close()
        engine.dispose()


def test_a_page_of_events_is_bounded_by_their_bytes(tmp_path: Path, monkeypatch: Any) -> None:
    """Code runs with large outputs: a page read for export holds at most PAGE_BYTES of payload past its first
    event (a page of 2,000 events was read whole: 400 runs of a megabyte each held the daemon at 866 MB), and
    every run's span is still sent, the cursor at the session's last event."""
    import labd.daemon.otel_export as otel_export

    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    writer = BatchWriter(engine)
    monkeypatch.setattr(otel_export, "PAGE_BYTES", 250_000)
    exporter, fake = _exporter(tmp_path, engine)
    pages: list[int] = []
    real = exporter._page

    def counted(*args: Any) -> Any:
        end, evs = real(*args)
        pages.append(len(evs))
        return end, evs

    exporter._page = counted  # type: ignore[method-assign]
    try:
        b = Batch({})
        b.add("s1", "session.created", CREATED, ts=1000.0)
        for i in range(10):
            b.add("s1", "code.execution", {**CODE, "output": "o" * 100_000}, src="r", ts=1001.0 + i)
        b.add("s1", "session.ended", ENDED, ts=1020.0)
        b.commit(writer)
        assert exporter.export_pass()
        assert max(pages) <= 3 and sum(pages) == 11, pages
        assert sorted(s.name for s in fake.sent) == ["run_code"] * 10 + ["session demo.count"]
        assert exporter.cursor.get("s1") == 12
        exporter.cursor.close()
    finally:
        writer.close()
        engine.dispose()
