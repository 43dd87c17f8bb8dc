"""PostgreSQL's ``integer`` is 32 bits: the store's byte counts (a file's size, a session's peak RSS, a blob's size)
must not be. They were, so on PostgreSQL (not SQLite, whose integers are 64-bit) a session that wrote a file over
2 GiB, or grew past 2 GiB of memory, had those events refused by the store (``event.rejected``) and not recorded."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from labd.store.projections import RowChanges, apply
from labd.store.writer import BatchWriter
from tests.conftest import DaemonProc, kill_runners, pg_schema

_FLOW = """\
import os


def big(ctx):
    with ctx.step("make"):
        with open(ctx.workdir / "big.bin", "wb") as f:
            f.truncate(3 << 30)  # sparse: 3 GiB apparent, nothing written
    return os.path.getsize(ctx.workdir / "big.bin")
"""


def test_sizes_over_2_gib_are_recorded_in_postgresql(isolated_env, postgres_url, tmp_path: Path) -> None:
    """On PostgreSQL, a 3 GiB (sparse) file a step writes is in the files table with its size (no event refused by
    the store), and the store's writer records a 5 GiB peak RSS and a sequence number past 2^31 (the daemon's own
    ``resource.sample`` and a very long session, written through ``BatchWriter`` as ingest does)."""
    (tmp_path / "big_flow.py").write_text(_FLOW)
    with pg_schema(postgres_url) as url:
        daemon = DaemonProc(isolated_env, args=["--db", url]).start()
        try:
            with daemon.client() as c:
                sid = c.start(f"{tmp_path / 'big_flow.py'}:big")
                final = c.wait(sid, timeout=120)
                rejected = [e["payload"] for e in c.history(sid, kinds=["event.rejected"])]
                assert rejected == [], rejected
                assert final["status"] == "completed", final
                sizes = {f["path"]: f["size"] for f in c.files(sid)}
                assert sizes.get("big.bin") == 3 << 30, sizes
        finally:
            daemon.stop()
            kill_runners(isolated_env)
        engine = sa.create_engine(url)
        try:
            writer = BatchWriter(engine)
            cur = writer.load_cursor(sid)
            assert cur is not None
            changes = RowChanges()
            apply(cur, cur.last_seq + 1, time.time(), "resource.sample", "d", None, {
                "rss": 5 << 30, "cpu_percent": 1.0, "num_procs": 1, "peak_rss": 5 << 30, "peak_cpu_percent": 1.0},
                changes)
            far = 3 << 30  # a sequence number past 2^31
            cur.last_seq, cur.runner_seq = far, far
            writer.commit([], changes, {sid: cur}, plain=[(sid, far, time.time(), "custom", "r", far, '{"name":"x"}')])
            writer.close()
            with engine.connect() as conn:
                row = conn.execute(sa.text("SELECT peak_rss, last_seq FROM sessions WHERE id = :s"), {"s": sid}).one()
                assert tuple(row) == (5 << 30, far)
                assert conn.execute(sa.text("SELECT src_seq FROM events WHERE session_id = :s AND seq = :n"),
                                    {"s": sid, "n": far}).scalar() == far
        finally:
            engine.dispose()
