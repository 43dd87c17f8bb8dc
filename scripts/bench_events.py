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
3. Write ceilings on the same row shape (the events table and its indexes copied from the daemon's database),
   into a fresh WAL database with the daemon's pragmas and checkpointing (``wal_autocheckpoint=0``, PASSIVE
   checkpoints every second on a thread of their own, as the daemon does): raw ``sqlite3.executemany`` (one
   transaction per batch; the goal's baseline), the same with the NULL columns left out of the statement instead
   of bound as None (what ingest's hot path does: the strongest raw writer), and labd's own
   ``store.writer.BatchWriter`` (SQLAlchemy ``exec_driver_sql`` + per-session UPDATE).

With ``--rounds R`` (default 3) step 1 runs R times without and R times with a client following every session
on the live tail (a SUB subscribed to ``session.``, decoding every message into events as the SDK's follow does,
``labd.ipc.live.decode_live``; ``--follower parse`` / ``verify``: a client that only parses the messages, or only
checks their signatures, to separate what following costs labd from the client's own decoding), alternated so
the box's drift hits both alike; medians are compared (goal: following costs <= 10 %, i.e. >= 0.9x). The
ceilings of step 3 are measured once, after the labd rounds, on rows of the last round's shape; the raw
``executemany`` ceiling is also measured right after each round of this tree without a follower, and that round's
end-to-end rate over it printed (on a box whose speed drifts by tens of percent within minutes, the ratio of two
figures taken a minute apart means more than that of two medians taken far apart).

With ``--baseline DIR`` every round also runs a daemon (and its runners) from another labd tree, alternated with
this one, so before/after figures come from the same run: DIR holds a ``labd`` package whose subpackages are that
tree's folders (e.g. ``git archive <rev>`` unpacked, then ``labd/{daemon,runner,ipc,store,frontends}`` symlinked to
its folders). The CPU per event of each side (daemon, its ingest thread, runners) is robust to the box's load; the
rates are not.

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

import bench_common  # noqa: E402
from bench_common import (  # noqa: E402
    BenchDaemon,
    CpuMeter,
    EventTail,
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


class ThreadSched:
    """Per-thread scheduler figures of a process from ``/proc/<pid>/task/*/schedstat`` and ``status``: CPU time,
    time runnable but waiting for a CPU (the run queue), and context switches. What a thread does with the rest of
    the wall time is sleeping (waiting for input, a lock such as the GIL, or I/O)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._t0 = 0.0
        self._s0: dict[int, tuple[int, ...]] = {}

    def _snap(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, tuple[int, ...]] = {}
        base = Path(f"/proc/{self.pid}/task")
        try:
            tids = list(base.iterdir())
        except OSError:
            return out
        for t in tids:
            try:
                run, wait, _slices = (int(x) for x in (t / "schedstat").read_text().split())
                vol = nonvol = 0
                for line in (t / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        nonvol = int(line.split()[1])
                out[int(t.name)] = (run, wait, vol, nonvol)
            except (OSError, ValueError):
                continue
        return out

    @staticmethod
    def _cpus() -> list[list[int]]:
        """Per-CPU jiffies from /proc/stat (user nice system idle iowait irq softirq steal ...)."""
        lines = Path("/proc/stat").read_text().splitlines()
        return [[int(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit()]

    def start(self) -> None:
        self._t0, self._s0, self._c0 = time.monotonic(), self._snap(), self._cpus()

    def stop(self) -> dict[str, Any]:
        """``{wall, threads: {tid: {cpu, runq, vol, nonvol}}}`` since :meth:`start` (seconds, switch counts)."""
        wall, s1, c1 = time.monotonic() - self._t0, self._snap(), self._cpus()
        hz = os.sysconf("SC_CLK_TCK")
        idle = sum((b[3] - a[3]) for a, b in zip(self._c0, c1, strict=False)) / hz
        steal = sum((b[7] - a[7]) for a, b in zip(self._c0, c1, strict=False) if len(b) > 7) / hz
        threads = {}
        for tid, (run, wait, vol, nonvol) in s1.items():
            r0, w0, v0, n0 = self._s0.get(tid, (0, 0, 0, 0))
            threads[tid] = {"cpu": (run - r0) / 1e9, "runq": (wait - w0) / 1e9, "vol": vol - v0, "nonvol": nonvol - n0}
        return {"wall": wall, "threads": threads, "box_idle": idle, "box_steal": steal}


INGEST_COUNTERS = ("ingest.idle_us", "ingest.write_us", "ingest.passes", "ingest.batches", "events_persisted")


def waits(sched: dict[str, Any], c0: dict[str, int], c1: dict[str, int]) -> dict[str, Any]:
    """Where the ingest thread (the busiest one) spent the wall time of a round: running, runnable but waiting for
    a CPU, idle in its poll (no input), and the rest asleep elsewhere (the GIL, mostly); plus the other threads' CPU."""
    ths = sorted(sched["threads"].items(), key=lambda kv: -kv[1]["cpu"])
    if not ths:
        return {}
    wall = sched["wall"]
    ing = ths[0][1]
    d = {k: c1.get(k, 0) - c0.get(k, 0) for k in INGEST_COUNTERS}
    idle = d["ingest.idle_us"] / 1e6
    return {"wall": wall, "cpu": ing["cpu"], "runq": ing["runq"], "idle": idle,
            "other_sleep": max(0.0, wall - ing["cpu"] - ing["runq"] - idle), "write": d["ingest.write_us"] / 1e6,
            "vol": ing["vol"], "nonvol": ing["nonvol"], "passes": d["ingest.passes"], "batches": d["ingest.batches"],
            "events": d["events_persisted"], "others_cpu": [t["cpu"] for _tid, t in ths[1:6]],
            "others_runq": sum(t["runq"] for _tid, t in ths[1:]), "box_idle": sched["box_idle"],
            "box_steal": sched["box_steal"]}


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


_ROUND_ROWS: list[tuple[Any, ...]] = []  # one sample for every round's ceiling (built once)


def round_ceiling(run: dict[str, Any], args: argparse.Namespace) -> float:
    """Raw sqlite3 ``executemany`` (``args.batch`` per commit) of the goal's rows, measured right after one labd
    round: the ratio to that round's end-to-end rate compares two figures a minute apart, not minutes."""
    import tempfile

    if not _ROUND_ROWS:
        _ROUND_ROWS.extend(sample_rows(run["sids"], min(args.ceiling_rows, run["total"])))
    with tempfile.TemporaryDirectory(prefix="labd-ceiling-") as tmp:
        return ceiling_raw(Path(tmp) / "ceiling.db", run["ddl"], _ROUND_ROWS, args.batch)


def ceiling_raw(path: Path, ddl: list[str], rows: list[tuple[Any, ...]], batch: int, plain: bool = False) -> float:
    """Raw sqlite3: executemany per batch, one commit per batch, with the daemon's pragmas and checkpointing
    (WAL, synchronous=NORMAL, ``wal_autocheckpoint=0`` and PASSIVE checkpoints every second from a thread of their
    own, as store.db.Checkpointer does). Returns rows/s.

    With ``plain``, the NULL ``node_id``/``parent`` columns are left out of the statement instead of bound as None
    (what ingest's hot path does, store.writer.PlainRow): Python's sqlite3 binds None through its adapter lookup,
    ~0.35 us per parameter, so this is the strongest raw writer of these rows."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    halt = threading.Event()

    def checkpoints() -> None:
        ck = sqlite3.connect(path, isolation_level=None)
        try:
            while not halt.wait(1.0):
                ck.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            ck.close()

    ckpt = threading.Thread(target=checkpoints, name="ceiling-checkpoint", daemon=True)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for stmt in ddl:  # the events table and any index on it, exactly as the daemon's database has them
            conn.execute(stmt)
        if plain:
            sql = "INSERT INTO events (session_id, seq, ts, kind, src, src_seq, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"
            rows = [r[:6] + (r[8],) for r in rows]
        else:
            sql = "INSERT INTO events (session_id, seq, ts, kind, src, src_seq, node_id, parent, payload) " \
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ckpt.start()
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[i:i + batch])
            conn.execute("COMMIT")
        return len(rows) / (time.perf_counter() - t0)
    finally:
        halt.set()
        if ckpt.is_alive():
            ckpt.join(10)
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


def round_pairs(runs: list[dict[str, Any]], rounds: int) -> list[float]:
    """This tree's end-to-end rate with a follower over the rate without, per round (the rounds alternate the two,
    so each pair saw nearly the same box)."""
    per_round = len(runs) // rounds
    out = []
    for r in range(rounds):
        sel = [run for run in runs[r * per_round:(r + 1) * per_round] if run["variant"] == "this"]
        plain = [run["e2e"] for run in sel if not run["follow"]]
        followed = [run["e2e"] for run in sel if run["follow"]]
        if plain and followed:
            out.append(followed[0] / plain[0])
    return out


def labd_round(args: argparse.Namespace, follow: bool, baseline: bool = False) -> dict[str, Any]:
    """One labd end-to-end run on a fresh daemon; with ``follow``, a client follows every session live; with
    ``baseline``, the daemon and its runners import labd from ``--baseline DIR`` instead of this tree (or, with
    ``--baseline-nice N``, run this tree with ``runner_nice = N``)."""
    repo = bench_common.REPO
    env: dict[str, str] = {}
    if baseline and args.baseline:
        bench_common.REPO = Path(args.baseline)  # the daemon's PYTHONPATH starts with it
    if baseline and args.baseline_env:
        env.update(kv.split("=", 1) for kv in args.baseline_env)  # type: ignore[misc]
    if baseline and args.baseline_nice is not None:
        env["LABD_RUNNER_NICE"] = str(args.baseline_nice)
    elif not baseline and args.runner_nice is not None:
        env["LABD_RUNNER_NICE"] = str(args.runner_nice)
    try:
        return _labd_round(args, follow, baseline, env)
    finally:
        bench_common.REPO = repo


def _labd_round(args: argparse.Namespace, follow: bool, baseline: bool, env: dict[str, str]) -> dict[str, Any]:
    with BenchDaemon(extra_env=env, keep=args.keep) as d:
        if args.boost:  # the daemon (all its threads, and its session's autogroup) ahead of the rest of the box
            from labd.daemon.priority import lower_priority

            lower_priority(d.pid, 0, base=(-args.boost, -args.boost))
        c = d.client()
        pause_gc = not (baseline and args.baseline_follower_gc)
        tail = (EventTail(d.home, kinds={"session.ended"}, pause_gc=pause_gc, decode=args.follower) if follow
                else None)
        sampler = CounterSampler(d, args.interval)
        try:
            if tail is not None:
                tail.start()
            meter = CpuMeter(d.pid, d.template_pid)
            sampler.start()
            time.sleep(0.3)
            sched = ThreadSched(d.pid)
            c_start = c.status()["counters"]
            meter.start()
            sched.start()
            own0 = time.process_time()  # this process: the follower's thread and its ZeroMQ I/O thread, when following
            t0 = time.perf_counter()
            sids = [c.start("demo.events", params={"n": args.n}) for _ in range(args.sessions)]
            for sid in sids:
                d.remember_runner(c.session(sid).get("pid"))
            statuses = d.wait_ended(sids, timeout=args.timeout, interval=0.05)
            t_client = time.perf_counter() - t0
            where = waits(sched.stop(), c_start, c.status()["counters"])
            if tail is not None:  # the follower has seen each session end: it kept up
                for sid in sids:
                    tail.wait_for(sid, "session.ended", timeout=60)
            time.sleep(0.3)  # let the template reap the runners so their CPU time is counted
            cpu = meter.stop()
            cpu["own_cpu"] = time.process_time() - own0
        finally:
            sampler.stop()
            if tail is not None:
                tail.stop()
            c.close()
        conn = d.db()
        try:
            q = f"IN ({','.join('?' * len(sids))})"
            (created,) = conn.execute(f"SELECT min(ts) FROM events WHERE kind='session.created' "
                                      f"AND session_id {q}", sids).fetchone()
            (ended,) = conn.execute(f"SELECT max(ts) FROM events WHERE kind='session.ended' "
                                    f"AND session_id {q}", sids).fetchone()
            (total,) = conn.execute(f"SELECT count(*) FROM events WHERE session_id {q}", sids).fetchone()
            (first_end,) = conn.execute(f"SELECT min(ts) FROM events WHERE kind='session.ended' "
                                        f"AND session_id {q}", sids).fetchone()
            vrows, problems = verify(conn, sids, args.n)
            ddl = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE tbl_name='events' AND sql IS NOT "
                                              "NULL ORDER BY type DESC")]  # the table first, then its indexes
        finally:
            conn.close()
    window = ended - created
    mean_ingest, best_ingest = sampler.rates()
    return {"follow": follow, "variant": "baseline" if baseline else "this",
            "sids": sids, "statuses": statuses, "t_client": t_client, "cpu": cpu,
            "total": total, "window": window, "e2e": total / window, "ticks": args.n * len(sids) / window,
            "mean": mean_ingest, "best": best_ingest, "vrows": vrows, "problems": problems, "ddl": ddl,
            "counters": sampler.counters, "waits": where, "tail": (ended - first_end) / (ended - created),
            "live_events": tail.events if tail is not None else 0,
            "live_messages": tail.messages if tail is not None else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=4, help="concurrent demo.events sessions (default 4)")
    ap.add_argument("-n", "--n", type=int, default=300_000, help="tick events per session (default 300000)")
    ap.add_argument("--rounds", type=int, default=3, help="labd rounds without and with a follower (default 3)")
    ap.add_argument("--no-follow", action="store_true", help="skip the rounds with a client following")
    ap.add_argument("--follower", choices=EventTail.DECODES, default="sdk",
                    help="what the following client does with each message: sdk = every event a dict, as the SDK's "
                         "follow (default); parse = verify and parse into compact lists; verify = check the "
                         "signature only (the cost of following to labd and the transport)")
    ap.add_argument("--batch", type=int, default=5000,
                    help="rows per transaction in the write ceilings (default 5000 = ingest's MAX_BATCH)")
    ap.add_argument("--ceiling-rows", type=int, default=1_000_000,
                    help="rows inserted by each ceiling micro-benchmark (default 1000000)")
    ap.add_argument("--interval", type=float, default=0.25, help="daemon counter sampling interval (s)")
    ap.add_argument("--timeout", type=float, default=300, help="give up waiting for the sessions after this (s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp home (daemon log, database)")
    ap.add_argument("--baseline", metavar="DIR", help="also run a labd tree importable from DIR, alternated (A/B)")
    ap.add_argument("--baseline-nice", metavar="N", type=int,
                    help="instead of --baseline: the other side is this tree with [daemon] runner_nice = N")
    ap.add_argument("--baseline-env", metavar="KEY=VALUE", action="append", default=[],
                    help="instead of --baseline: the other side is this tree with these environment variables set "
                         "for its daemon (repeatable; e.g. LABD_RUNNER_NICE=5)")
    ap.add_argument("--baseline-follower-gc", action="store_true",
                    help="instead of --baseline: the other side is this tree with the follower decoding as the SDK "
                         "did before labd.ipc.gcpause (the cyclic garbage collector on while it decodes)")
    ap.add_argument("--runner-nice", metavar="N", type=int, help="this tree's [daemon] runner_nice (default: its own)")
    ap.add_argument("--boost", metavar="K", type=int, default=0,
                    help="(root only) run this script and each daemon at niceness -K, so that other programs on a "
                         "shared box hardly compete: a stand-in for a quiet box (runners follow the daemon's "
                         "runner_nice relative to it; a baseline tree without runner_nice leaves its runners at 0)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    if args.boost:
        import atexit

        from labd.daemon.priority import lower_priority, own_priority

        # the autogroup is the whole shell session's: give it back its value when the script ends
        group0 = own_priority()[1]
        if group0 is not None:
            atexit.register(lambda: Path("/proc/self/autogroup").write_text(str(group0)))
        lower_priority(os.getpid(), 0, base=(-args.boost, -args.boost))
        if os.getpriority(os.PRIO_PROCESS, 0) != -args.boost:
            ap.error("--boost needs the privilege to lower niceness (root or CAP_SYS_NICE)")
    print_machine(f"{args.sessions} x demo.events n={args.n:,}, {args.rounds} rounds, follower: {args.follower}")
    t_begin = time.monotonic()
    try:
        runs: list[dict[str, Any]] = []
        if args.baseline and args.baseline_nice is not None:
            ap.error("--baseline and --baseline-nice are alternatives")
        ab = (bool(args.baseline) or args.baseline_nice is not None or bool(args.baseline_env)
              or args.baseline_follower_gc)
        variants: tuple[bool, ...] = (False, True) if ab else (False,)
        for r in range(args.rounds):
            for follow in ((False,) if args.no_follow else (False, True)):
                for base in variants if r % 2 == 0 else variants[::-1]:
                    print(f"round {r + 1}: {'baseline' if base else 'this tree'}, "
                          f"{'with' if follow else 'without'} a client following ...", flush=True)
                    runs.append(labd_round(args, follow, base))
                    if not follow and not base:  # the ceiling again, right after: the box drifts between rounds
                        runs[-1]["raw_round"] = round_ceiling(runs[-1], args)
        last = [run for run in runs if run["variant"] == "this"][-1]
        lost = 0
        for run in runs:
            lost += sum(v[-1] for v in run["vrows"])
            if run["problems"]:
                print(f"problems ({'follow' if run['follow'] else 'no follow'}): {run['problems']}")
        print_table(["session", "status", "rows", "ticks", "seq", "seq gap-free", "src_seq gap-free", "lost"],
                    last["vrows"], title="Loss check (store, last round)")
        dropped: dict[str, int] = {}
        for run in runs:
            for k, v in run["counters"].items():
                if k.startswith(("dropped", "duplicates", "events_rejected")):
                    dropped[k] = dropped.get(k, 0) + v
        print(f"lost ticks over all rounds: {lost}; daemon drop/dup counters: {dropped or 'none'}")

        # ---- write ceilings, same run, after the labd rounds ------------------------------------------------
        import tempfile

        with tempfile.TemporaryDirectory(prefix="labd-ceiling-") as tmp:
            n_rows = min(args.ceiling_rows, last["total"])
            rows = sample_rows(last["sids"], n_rows)
            dbp = Path(tmp) / "ceiling.db"
            raw_b = ceiling_raw(dbp, last["ddl"], rows, args.batch)
            raw_1k = ceiling_raw(dbp, last["ddl"], rows, 1000)
            raw_plain = ceiling_raw(dbp, last["ddl"], rows, args.batch, plain=True)
            bw = ceiling_batchwriter(Path(tmp) / "ceiling-bw.db", last["sids"], rows, args.batch)

        def med(follow: bool, key: str, variant: str = "this") -> float:
            vals = sorted(run[key] for run in runs if run["follow"] == follow and run["variant"] == variant)
            return vals[len(vals) // 2] if vals else float("nan")

        plain, followed = med(False, "e2e"), med(True, "e2e")
        per_round = len(runs) // args.rounds
        print_table(["round", "labd", "client following", "end-to-end events/s", "vs raw sqlite3", "daemon mean busy",
                     "best 1 s", "events seen live", "live messages"],
                    [[i // per_round + 1, run["variant"], "yes" if run["follow"] else "no", fmt_rate(run["e2e"]),
                      ratio(run["e2e"], raw_b), fmt_rate(run["mean"]), fmt_rate(run["best"]),
                      f"{run['live_events']:,}" if run["follow"] else "",
                      f"{run['live_messages']:,}" if run["follow"] else ""] for i, run in enumerate(runs)],
                    title="labd rounds")
        table = [
            ["labd end to end, median", fmt_rate(plain), ratio(plain, raw_b), f"{len(runs)} rounds in all"],
            ["labd end to end, client following all, median", fmt_rate(followed), ratio(followed, raw_b),
             f"{ratio(followed, plain)} of without"],
            ["daemon insert rate, mean busy (median)", fmt_rate(med(False, "mean")), ratio(med(False, "mean"), raw_b),
             "events_persisted counter"],
            [f"labd BatchWriter, {args.batch}/commit", fmt_rate(bw), ratio(bw, raw_b), "SQLAlchemy exec_driver_sql"],
            [f"raw sqlite3 executemany, {args.batch}/commit", fmt_rate(raw_b), "1.00x",
             f"{n_rows:,} rows, WAL, NORMAL"],
            ["raw sqlite3 executemany, 1000/commit", fmt_rate(raw_1k), ratio(raw_1k, raw_b), ""],
            [f"raw sqlite3 executemany, {args.batch}/commit, NULLs not bound", fmt_rate(raw_plain),
             ratio(raw_plain, raw_b), f"labd end to end: {ratio(plain, raw_plain)} of this"],
        ]
        if ab:
            b_plain, b_followed = med(False, "e2e", "baseline"), med(True, "e2e", "baseline")
            table[2:2] = [
                ["baseline labd end to end, median", fmt_rate(b_plain), ratio(b_plain, raw_b),
                 f"this tree: {ratio(plain, b_plain)} of baseline"],
                ["baseline, client following all, median", fmt_rate(b_followed), ratio(b_followed, raw_b),
                 f"{ratio(b_followed, b_plain)} of without"]]
        print_table(["path", "rate", "vs raw sqlite3", "notes"], table, title="Event throughput (events/s)")
        for variant, follow in [(v, f) for v in ("this", "baseline") if v == "this" or ab
                                for f in ((False,) if args.no_follow else (False, True))]:
            sel = [run for run in runs if run["follow"] == follow and run["variant"] == variant]
            total = sum(run["total"] for run in sel)
            wall = sum(run["cpu"]["wall"] for run in sel)
            dcpu = sum(run["cpu"]["daemon_cpu"] for run in sel)
            icpu = sum(run["cpu"]["busiest_thread_cpu"] for run in sel)
            rcpu = sum(run["cpu"]["runners_cpu"] for run in sel)
            ocpu = sum(run["cpu"]["own_cpu"] for run in sel)
            who = "this tree" if variant == "this" else "baseline"
            mode = "with" if follow else "without"
            print(f"CPU, {who}, {mode} a follower ({wall:.2f} s wall over {len(sel)} rounds): "
                  f"per event daemon {dcpu * 1e6 / total:.1f} us (ingest thread {icpu * 1e6 / total:.1f} us, "
                  f"{icpu / wall:.0%} of a core), runners {rcpu * 1e6 / total:.1f} us, this script "
                  f"{ocpu * 1e6 / total:.2f} us (the follower's side); raw sqlite3 insert {1e6 / raw_b:.1f} us")
        print_table(["round", "labd", "following", "ingest: running", "waiting for a CPU", "idle in poll",
                     "asleep elsewhere (GIL)", "of which in write", "passes", "events/batch", "switches vol/invol",
                     "other threads' CPU (top 5)", "box idle (of 1 core)", "steal",
                     "first to last session end"],
                    [[i // per_round + 1, run["variant"], "yes" if run["follow"] else "no",
                      *(f"{w[k] / w['wall']:.0%}" for k in ("cpu", "runq", "idle", "other_sleep", "write")),
                      f"{w['passes']:,}", f"{w['events'] / max(1, w['batches']):,.0f}", f"{w['vol']:,}/{w['nonvol']:,}",
                      " ".join(f"{x / w['wall']:.0%}" for x in w["others_cpu"]), f"{w['box_idle'] / w['wall']:.0%}",
                      f"{w['box_steal'] / w['wall']:.0%}", f"{run['tail']:.0%}"]
                     for i, run in enumerate(runs) if (w := run["waits"])],
                    title="Where the ingest thread's wall time goes (share of the round; 'in write' overlaps)")
        same = sorted(run["e2e"] / run["raw_round"] for run in runs if "raw_round" in run)
        if same:
            print(f"\nend to end / raw sqlite3 measured right after the same round: "
                  f"{' '.join(f'{x:.2f}' for x in same)} (median {same[len(same) // 2]:.2f}x; raw per round: "
                  f"{' '.join(fmt_rate(run['raw_round']) for run in runs if 'raw_round' in run)})")
        print(f"\nratios: end-to-end / raw sqlite3 = {ratio(plain, raw_b)} (goal >= 0.75x; "
              f"{ratio(plain, raw_plain)} of raw sqlite3 not binding the NULLs); with a client "
              f"following / without = {ratio(followed, plain)} (goal >= 0.9x)")
        if not args.no_follow:  # the spread the medians hide: each round's pair ran minutes apart at most
            pairs = round_pairs(runs, args.rounds)
            expected = args.n * args.sessions
            kept_up = sum(1 for run in runs if run["follow"] and run["variant"] == "this"
                          and run["live_events"] >= expected)
            if pairs:
                print(f"following / without, round by round: {' '.join(f'{x:.2f}' for x in pairs)} "
                      f"({sum(x >= 0.9 for x in pairs)} of {len(pairs)} >= 0.9x); the follower saw every tick live "
                      f"in {kept_up} of {len(pairs)} rounds (a follower that falls behind the daemon's send "
                      f"limit misses messages, does less work, and flatters the ratio)")
        verdict = "MET" if plain >= TARGET and lost == 0 else "NOT MET"
        print(f"target: >= {TARGET:,} events/s persisted, 0 lost: {plain:,.0f} events/s, {lost} lost -> {verdict}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    print(f"\n(total {time.monotonic() - t_begin:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
