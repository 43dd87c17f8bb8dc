"""The OpenTelemetry exporter's cursor file (daemon/otel_export.py) is written only when the cursor moved."""

from __future__ import annotations

from pathlib import Path

from labd.daemon.otel_export import OtelExporter
from labd.store.db import migrate, open_engine
from labd.store.projections import SessionCursor
from labd.store.writer import BatchWriter
from tests.unit.test_store import CREATED, Batch


def test_cursor_file_is_rewritten_only_when_the_cursor_moves(tmp_path: Path) -> None:
    """A pass that exports a new event writes the cursor file; the passes after it, with nothing new, leave the
    file untouched (same inode: not even replaced); a new event moves it and it is written again."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    writer = BatchWriter(engine)
    cursors: dict[str, SessionCursor] = {}
    cursor_file = tmp_path / "otel.cursor"
    exporter = OtelExporter(engine, "http://127.0.0.1:9", cursor_file)  # no span to send: never contacted
    try:
        assert exporter.export_pass() and not cursor_file.exists()  # nothing yet: nothing to remember
        b = Batch(cursors)
        b.add("s1", "session.created", CREATED)
        b.commit(writer)
        assert exporter.export_pass()
        first = cursor_file.stat()
        for _ in range(3):
            assert exporter.export_pass()
        again = cursor_file.stat()
        assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        b = Batch(cursors)
        b.add("s1", "custom", {"name": "x"})
        b.commit(writer)
        assert exporter.export_pass()
        assert cursor_file.stat().st_ino != first.st_ino
        assert '"s1": 2' in cursor_file.read_text()
    finally:
        exporter.http.close()
        writer.close()
        engine.dispose()
