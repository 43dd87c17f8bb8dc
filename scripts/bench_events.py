#!/usr/bin/env python
"""End-to-end event throughput: concurrent ``demo.events`` sessions -> runner channel -> ingest -> SQLite.

One run does, side by side:

1. labd end to end: ``--sessions`` (default 4) concurrent sessions of ``demo.events`` (``n`` small custom
   events ``tick`` each). Rate = rows persisted for those sessions / (first ``session.created`` -> last
   ``session.ended``, both daemon-side timestamps in the store). The daemon's own insert rate comes from
   its ``events_persisted`` counter, sampled over ``daemon.status``. CPU seconds of the daemon (busiest
   thread = the ingest thread) and of the runners show which side is the limit.
2. Loss check on the store: per session, exactly ``n`` ``tick`` events with data 0..n-1, ``seq`` 1..last
   gap-free, runner ``src_seq`` 1..last gap-free, ``sessions.last_seq`` = max(seq), status completed.
3. Write ceilings on the same row shape (the events table DDL copied from the daemon's database), into a
   fresh WAL database with the daemon's pragmas: raw ``sqlite3.executemany`` (one transaction per batch),
   and labd's own ``store.writer.BatchWriter`` (SQLAlchemy ``exec_driver_sql`` + per-session UPDATE).

Prints the figures and the ratios; nothing asserts on timing (noisy shared machine).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import (  # noqa: E402
    BenchDaemon,
    CpuMeter,
    fmt_rate,
    interrupt_on_sigterm,
    print_machine,
    print_table,
    ratio,
)

TARGET = 150_000  # events/s persisted (the target)


class CounterSampler(threading.Thread):
    """Samples the daemon's ``events_persisted`` counter (own client: sockets are per thread)."""

    def __init__(self, daemon: BenchDaemon, interval: float) -> None:
        super().__init__(name="bench-counter", daemon=True)
        self.d = daemon
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.counters: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        c = self.d.client(timeout=10)
        try:
            while not self._halt.is_set():
                try:
                    st = c.status()
                except Exception:  # noqa: BLE001 - a slow reply under load: try again
                    continue
                self.counters = st["counters"]
                self.samples.append((time.monotonic(), int(st["counters"].get("events_persisted", 0))))
                self._halt.wait(self.interval)
        finally:
            c.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)

    def rates(self, window: float = 1.0) -> tuple[float, float]:
        """(mean rate over the busy span, best rate over any ``window``-second span)."""
        s = self.samples
        busy = [i for i in range(1, len(s)) if s[i][1] > s[i - 1][1]]
        if not busy:
            return float("nan"), float("nan")
        a, b = busy[0] - 1, busy[-1]
        mean = (s[b][1] - s[a][1]) / max(1e-9, s[b][0] - s[a][0])
        best = 0.0
        for i in range(a, b + 1):
            js = [j for j in range(a, i) if s[i][0] - s[j][0] >= window]
            if js:
                j = js[-1]
                best = max(best, (s[i][1] - s[j][1]) / (s[i][0] - s[j][0]))
        return mean, best or mean


def verify(conn: sqlite3.Connection, sids: list[str], n: int) -> tuple[list[list[Any]], list[str]]:
    rows, problems = [], []
    for sid in sids:
        (cnt, lo, hi) = conn.execute("SELECT count(*), min(seq), max(seq) FROM events WHERE session_id=?",
                                     (sid,)).fetchone()
        (rcnt, rlo, rhi) = conn.execute("SELECT count(*), min(src_seq), max(src_seq) FROM events "
                                        "WHERE session_id=? AND src='r'", (sid,)).fetchone()
        (ticks, dmin, dmax, ddistinct) = conn.execute(
            "SELECT count(*), min(json_extract(payload,'$.data')), max(json_extract(payload,'$.data')), "
            "count(DISTINCT json_extract(payload,'$.data')) FROM events "
            "WHERE session_id=? AND kind='custom' AND json_extract(payload,'$.name')='tick'", (sid,)).fetchone()
        (status, last_seq) = conn.execute("SELECT status, last_seq FROM sessions WHERE id=?", (sid,)).fetchone()
        seq_ok = lo == 1 and hi == cnt
        src_ok = rlo == 1 and rhi == rcnt
        ticks_ok = ticks == n and ddistinct == n and dmin == 0 and dmax == n - 1
        ok = seq_ok and src_ok and ticks_ok and last_seq == hi and status == "completed"
        if not ok:
            problems.append(f"{sid}: rows={cnt} seq {lo}..{hi} runner src_seq {rlo}..{rhi} ({rcnt}) ticks={ticks} "
                            f"data {dmin}..{dmax} distinct {ddistinct} last_seq={last_seq} status={status}")
        rows.append([sid, status, cnt, ticks, f"{lo}..{hi}", "yes" if seq_ok else "NO",
                     "yes" if src_ok else "NO", n - ticks])
    return rows, problems


def sample_rows(sids: list[str], n_rows: int) -> list[tuple[Any, ...]]:
    """Rows of the daemon's shape for a ``tick`` event, sessions interleaved in runner-sized runs of 1000."""
    import orjson

    ts = time.time()
    per = -(-n_rows // len(sids))
    out: list[tuple[Any, ...]] = []
    for start in range(0, per, 1000):
        for sid in sids:
            for i in range(start, min(start + 1000, per)):
                seq = i + 3
                out.append((sid, seq, ts + i * 1e-6, "custom", "r", i + 1, None, None,
                            orjson.dumps({"name": "tick", "data": i}).decode()))
    return out[:n_rows] if len(out) > n_rows else out


def ceiling_raw(path: Path, ddl: str, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Raw sqlite3: executemany per batch, one commit per batch, WAL + synchronous=NORMAL. Returns rows/s."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(ddl)
        sql = "INSERT INTO events (session_id, seq, ts, kind, src, src_seq, node_id, parent, payload) " \
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[i:i + batch])
            conn.execute("COMMIT")
        return len(rows) / (time.perf_counter() - t0)
    finally:
        conn.close()


def ceiling_batchwriter(path: Path, sids: list[str], rows: list[tuple[Any, ...]], batch: int) -> float:
    """labd's BatchWriter (what ingest calls) on a migrated database. Returns rows/s."""
    from labd.store.db import migrate, open_engine
    from labd.store.projections import RowChanges, SessionCursor, apply
    from labd.store.writer import BatchWriter

    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    engine = open_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
        w = BatchWriter(engine)
        cursors = {sid: SessionCursor(id=sid) for sid in sids}
        changes = RowChanges()
        for sid in sids:
            apply(cursors[sid], 1, time.time(), "session.created", "d", None,
                  {"workflow": "demo.events", "name": sid, "params": {}, "limits": {}, "workdir": "/tmp"}, changes)
        w.commit([], changes, cursors)
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            for r in chunk:
                cur = cursors[r[0]]
                cur.last_seq = r[1]
                cur.runner_seq = r[5]
            w.commit(chunk, RowChanges(), cursors)
        rate = len(rows) / (time.perf_counter() - t0)
        w.close()
        return rate
    finally:
        engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=4, help="concurrent demo.events sessions (default 4)")
    ap.add_argument("-n", "--n", type=int, default=300_000, help="tick events per session (default 300000)")
    ap.add_argument("--batch", type=int, default=5000,
                    help="rows per transaction in the write ceilings (default 5000 = ingest's MAX_BATCH)")
    ap.add_argument("--ceiling-rows", type=int, default=1_000_000,
                    help="rows inserted by each ceiling micro-benchmark (default 1000000)")
    ap.add_argument("--interval", type=float, default=0.25, help="daemon counter sampling interval (s)")
    ap.add_argument("--timeout", type=float, default=300, help="give up waiting for the sessions after this (s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp home (daemon log, database)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine(f"{args.sessions} x demo.events n={args.n:,}")
    t_begin = time.monotonic()
    sampler = None
    try:
        with BenchDaemon(keep=args.keep) as d:
            c = d.client()
            try:
                meter = CpuMeter(d.pid, d.template_pid)
                sampler = CounterSampler(d, args.interval)
                sampler.start()
                time.sleep(0.3)
                meter.start()
                t0 = time.perf_counter()
                sids = [c.start("demo.events", params={"n": args.n}) for _ in range(args.sessions)]
                t_started = time.perf_counter()
                for sid in sids:
                    d.remember_runner(c.session(sid).get("pid"))
                statuses = d.wait_ended(sids, timeout=args.timeout, interval=0.05)
                t_client = time.perf_counter() - t0
                time.sleep(0.3)  # let the template reap the runners so their CPU time is counted
                cpu = meter.stop()
                sampler.stop()
            finally:
                c.close()
            conn = d.db()
            try:
                q = f"IN ({','.join('?' * len(sids))})"
                (created,) = conn.execute(f"SELECT min(ts) FROM events WHERE kind='session.created' "
                                          f"AND session_id {q}", sids).fetchone()
                (ended,) = conn.execute(f"SELECT max(ts) FROM events WHERE kind='session.ended' "
                                        f"AND session_id {q}", sids).fetchone()
                (total,) = conn.execute(f"SELECT count(*) FROM events WHERE session_id {q}", sids).fetchone()
                vrows, problems = verify(conn, sids, args.n)
                ddl = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='events'").fetchone()[0]
            finally:
                conn.close()
            counters = sampler.counters
            window = ended - created
            e2e = total / window
            ticks_rate = args.n * len(sids) / window
            mean_ingest, best_ingest = sampler.rates()

            print(f"\nsessions started in {(t_started - t0) * 1000:.1f} ms; all ended after {t_client:.2f} s "
                  f"(client view); statuses {sorted(set(statuses.values()))}")
            print_table(["session", "status", "rows", "ticks", "seq", "seq gap-free", "src_seq gap-free", "lost"],
                        vrows, title="Loss check (store)")
            lost = sum(r[-1] for r in vrows)
            dropped = {k: v for k, v in counters.items() if k.startswith(("dropped", "duplicates", "events_rejected"))}
            print(f"lost ticks: {lost}; problems: {problems or 'none'}; daemon drop/dup counters: {dropped or 'none'}")

            # ---- write ceilings, same run, after the daemon is idle --------------------------------------
            n_rows = min(args.ceiling_rows, total)
            rows = sample_rows(sids, n_rows)
            dbp = d.tmp / "ceiling.db"
            raw_b = ceiling_raw(dbp, ddl, rows, args.batch)
            raw_1k = ceiling_raw(dbp, ddl, rows, 1000)
            bw = ceiling_batchwriter(d.tmp / "ceiling-bw.db", sids, rows, args.batch)

        wall = cpu["wall"]
        table = [
            ["labd end to end (all rows)", fmt_rate(e2e), ratio(e2e, raw_b), f"{total:,} rows in {window:.2f} s"],
            ["labd end to end (tick events)", fmt_rate(ticks_rate), ratio(ticks_rate, raw_b), ""],
            ["daemon insert rate, mean busy", fmt_rate(mean_ingest), ratio(mean_ingest, raw_b),
             "events_persisted counter"],
            ["daemon insert rate, best 1 s", fmt_rate(best_ingest), ratio(best_ingest, raw_b), ""],
            [f"labd BatchWriter, {args.batch}/commit", fmt_rate(bw), ratio(bw, raw_b), "SQLAlchemy exec_driver_sql"],
            [f"raw sqlite3 executemany, {args.batch}/commit", fmt_rate(raw_b), "1.00x",
             f"{n_rows:,} rows, WAL, NORMAL"],
            ["raw sqlite3 executemany, 1000/commit", fmt_rate(raw_1k), ratio(raw_1k, raw_b), ""],
        ]
        print_table(["path", "rate", "vs raw sqlite3", "notes"], table, title="Event throughput (events/s)")
        per_ev = 1e6 / max(1, total)
        print(f"\nCPU during the run ({wall:.2f} s wall, {os.cpu_count()} cpus): daemon {cpu['daemon_cpu']:.2f} s "
              f"({cpu['daemon_cpu'] / wall:.0%} of a core; busiest thread = ingest {cpu['busiest_thread_cpu']:.2f} s, "
              f"{cpu['busiest_thread_cpu'] / wall:.0%}), runners {cpu['runners_cpu']:.2f} s "
              f"({cpu['runners_cpu'] / wall:.0%} of a core)")
        print(f"CPU per event: daemon {cpu['daemon_cpu'] * per_ev:.1f} us (ingest thread "
              f"{cpu['busiest_thread_cpu'] * per_ev:.1f} us), runners {cpu['runners_cpu'] * per_ev:.1f} us; "
              f"raw sqlite3 insert {1e6 / raw_b:.1f} us")
        print(f"\nratios: end-to-end / raw sqlite3 ceiling = {ratio(e2e, raw_b)}; end-to-end / BatchWriter = "
              f"{ratio(e2e, bw)}; daemon busy insert rate / raw ceiling = {ratio(mean_ingest, raw_b)}")
        verdict = "MET" if e2e >= TARGET and lost == 0 and not problems else "NOT MET"
        print(f"target: >= {TARGET:,} events/s persisted, 0 lost: {e2e:,.0f} events/s, {lost} lost -> {verdict}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
    print(f"\n(total {time.monotonic() - t_begin:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
