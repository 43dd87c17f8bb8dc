#!/usr/bin/env python
"""Scale: 1 ... N idle sessions on one daemon: start latency, daemon CPU and memory, ingest rate, stop.

For each step (a fresh daemon per step, so figures do not leak between steps):

1. start N ``demo.sleep`` sessions (they print one line, then sleep) one after another from one client:
   request latency (``session.start`` -> reply), request -> runner's ``session.started`` and request -> the
   first ``output`` event on the live tail (p50/p99); every session must start and print;
2. idle: after a settling pause, the daemon's CPU (% of one core) over ``--idle`` seconds with N idle
   sessions, and of its busiest thread alone (OS threads are unnamed: ``py-spy record --threads`` names
   them), its RSS and PSS;
3. ingest with N idle sessions: one ``demo.events`` session of ``--events`` events; rate = its tick events / (its
   first tick's time stamp, taken by the runner as it emits it -> ``session.ended``, taken by the daemon once all
   is persisted; one host, one clock), and the ratio to the first step. Its start is left out: it grows with N
   and is measured in step 1 (until 2026-12-03 the span began at ``session.created``, which put ~40-60 ms more
   start at 200 sessions into a ~0.4 s probe);
4. stop all N (``session.stop`` each, grace 5 s) and wait until all are terminal; every one must end
   ``cancelled``.

Nothing asserts on timing (noisy shared 2-core box): figures and ratios are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import (  # noqa: E402
    BenchDaemon,
    CpuMeter,
    EventTail,
    fmt_ms,
    fmt_rate,
    interrupt_on_sigterm,
    pct,
    print_machine,
    print_table,
    ratio,
)


def ingest_rate(d: BenchDaemon, c: object, n: int) -> float:
    sid = c.start("demo.events", params={"n": n})  # type: ignore[attr-defined]
    d.wait_ended([sid], timeout=600, interval=0.05)
    conn = d.db()
    try:
        (first, ticks) = conn.execute("SELECT min(ts), count(*) FROM events WHERE session_id=? AND kind='custom'",
                                      (sid,)).fetchone()
        (ended,) = conn.execute("SELECT ts FROM events WHERE session_id=? AND kind='session.ended'",
                                (sid,)).fetchone()
    finally:
        conn.close()
    return float(ticks) / max(1e-9, ended - first)


def kill_latency(args: argparse.Namespace) -> dict[str, list[float]]:
    """``--kills`` memory hogs one after another under ``--kill-limit``: breach -> runner death (session.ended,
    daemon-side ts; the breach instant is written to a file by the hog), and the measured peak / limit."""
    scripts = os.path.dirname(os.path.abspath(__file__))
    lat: list[float] = []
    over: list[float] = []
    early = 0
    with BenchDaemon(keep=args.keep, quiet=True, extra_env={"PYTHONPATH": scripts}) as d, d.client(timeout=60) as c:
        for _ in range(args.kills):
            sid = c.start("bench_scale_flows:hog", params={"limit_mb": args.kill_limit}, memory=f"{args.kill_limit}M")
            d.remember_runner(c.session(sid).get("pid"))
            d.wait_ended([sid], timeout=120, interval=0.05)
            row = c.session(sid)
            ended = [e["ts"] for e in c.history(sid, kinds=["session.ended"])][0]
            breach = [e["payload"] for e in c.history(sid, kinds=["limit.exceeded"])]
            crossed, chunk = Path(row["workdir"]) / "crossed", Path(row["workdir"]) / "chunk"
            mark = crossed if crossed.exists() else chunk  # killed mid-chunk: the chunk's start (upper bound)
            if not breach or not mark.exists():
                print(f"  hog {sid}: no breach recorded ({row['status']}: {row['reason']})")
                continue
            early += mark is chunk
            lat.append(ended - float(mark.read_text()))
            over.append(breach[0]["measured"] / breach[0]["max"])
    print(f"  {early} of {len(lat)} hogs were killed while touching a chunk, before they could see their own "
          "breach: their latency counts from that chunk's start (an upper bound)")
    return {"latency": lat, "overshoot": over}


def step(n: int, args: argparse.Namespace, heartbeat: str = "", spare: str = "") -> dict[str, object]:
    import psutil

    env = {"LABD_CHANNEL_HEARTBEAT_S": heartbeat} if heartbeat else {}
    if spare:
        env["LABD_SPARE_RUNNERS"] = spare
    with BenchDaemon(keep=args.keep, quiet=True, extra_env=env) as d:
        tail = EventTail(d.home, kinds={"session.started", "output"})
        tail.start()
        c = d.client(timeout=60)
        try:
            t_req: dict[str, float] = {}
            req_lat: list[float] = []
            t0 = time.monotonic()
            for _ in range(n):
                t = time.perf_counter()
                sid = c.start("demo.sleep", params={"seconds": 3600})
                req_lat.append(time.perf_counter() - t)
                t_req[sid] = t
            start_all = time.monotonic() - t0
            started: list[float] = []
            printed: list[float] = []
            missing = 0
            for sid, t in t_req.items():
                s = tail.wait_for(sid, "session.started", timeout=max(5.0, args.timeout - (time.monotonic() - t0)))
                o = tail.wait_for(sid, "output", timeout=5.0)
                if s is None or o is None:
                    missing += 1
                    continue
                started.append(s - t)
                printed.append(o - t)
            for r in c.sessions(limit=10_000):
                d.remember_runner(r.get("pid"))
            time.sleep(args.settle)
            daemon = psutil.Process(d.pid)
            meter = CpuMeter(d.pid, d.template_pid)
            meter.start()
            time.sleep(args.idle)
            cpu = meter.stop()
            mem = daemon.memory_full_info()
            rate = ingest_rate(d, c, args.events) if args.events else float("nan")
            t1 = time.monotonic()
            for sid in t_req:
                c.stop(sid, grace=5)
            statuses = d.wait_ended(list(t_req), timeout=args.timeout, interval=0.2)
            stop_all = time.monotonic() - t1
        finally:
            c.close()
            tail.stop()
    return {"n": n, "hb": heartbeat or "default", "spare": spare or "default", "start_all": start_all, "req": req_lat,
            "started": started,
            "printed": printed,
            "missing": missing, "cpu_pct": cpu["daemon_cpu"] / cpu["wall"] * 100,
            # the busiest single thread (OS threads are unnamed; the highest thread id was once the monitor,
            # but the daemon now starts more threads after it: py-spy --threads names them)
            "monitor_pct": max(c for _, c in cpu["threads"]) / cpu["wall"] * 100 if cpu["threads"] else float("nan"),
            "rss": mem.rss, "pss": mem.pss,
            "rate": rate, "stop_all": stop_all,
            "cancelled": sum(1 for s in statuses.values() if s == "cancelled")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="1,10,50", help="session counts, comma-separated (default 1,10,50; the "
                    "issue's full run: 1,100,500)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle CPU measurement window per step (s)")
    ap.add_argument("--settle", type=float, default=3.0, help="pause after the starts before measuring (s)")
    ap.add_argument("--events", type=int, default=300_000, help="events of the ingest probe (default 300000; 0: skip)")
    ap.add_argument("--timeout", type=float, default=600, help="give up on a step after this (s)")
    ap.add_argument("--kills", type=int, default=20, help="memory-limit kills to time (0: skip)")
    ap.add_argument("--kill-limit", type=int, default=200, help="memory limit of the hogs, MiB (default 200)")
    ap.add_argument("--keep", action="store_true", help="keep the temp homes")
    ap.add_argument("--spare", default="", help="spare runner settings to compare, comma-separated (e.g. 1,0: "
                    "[daemon] spare_runners on and off; default: the daemon's own)")
    ap.add_argument("--heartbeat", default="", help="runners' idle heartbeat periods to compare, comma-separated "
                    "seconds (e.g. 30,1; default: the channel's own)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    steps = [int(x) for x in args.steps.split(",") if x.strip()]
    print_machine(f"steps {steps}, idle window {args.idle:g} s, ingest probe {args.events:,} events")
    results = []
    beats = [x.strip() for x in args.heartbeat.split(",") if x.strip()] or [""]
    spares = [x.strip() for x in args.spare.split(",") if x.strip()] or [""]
    for n in steps:
        for hb in beats:  # alternated within a step, so drift of the shared box hits both alike
            for sp in spares:
                print(f"step: {n} sessions{f', heartbeat {hb} s' if hb else ''}"
                      f"{f', spare_runners {sp}' if sp else ''} ...", flush=True)
                results.append(step(n, args, hb, sp))
    rows = []
    for r in results:
        base = next(x["rate"] for x in results if x["hb"] == r["hb"] and x["spare"] == r["spare"])
        req, started, printed = r["req"], r["started"], r["printed"]
        rows.append([r["n"], r["hb"], r["spare"], f"{r['start_all']:.2f}", fmt_ms(pct(req, 50)), fmt_ms(pct(req, 99)),  # type: ignore[arg-type]
                     fmt_ms(pct(started, 50)), fmt_ms(pct(started, 99)),  # type: ignore[arg-type]
                     fmt_ms(pct(printed, 50)), fmt_ms(pct(printed, 99)), r["missing"],  # type: ignore[arg-type]
                     f"{r['cpu_pct']:.2f}", f"{r['monitor_pct']:.2f}",
                     f"{r['rss'] / 2**20:.0f}", f"{r['pss'] / 2**20:.0f}",  # type: ignore[operator]
                     fmt_rate(r["rate"]), ratio(r["rate"], base), f"{r['stop_all']:.2f}",  # type: ignore[arg-type]
                     f"{r['cancelled']}/{r['n']}"])
    print_table(["sessions", "heartbeat s", "spare", "start all s", "req p50 ms", "req p99", "started p50",
                 "started p99", "output p50", "output p99", "missing", "daemon CPU % idle", "busiest thread %",
                 "RSS MiB", "PSS MiB", "ingest",
                 "vs first", "stop all s", "cancelled"], rows, title="Scale (one fresh daemon per step)")
    if args.kills:
        k = kill_latency(args)
        lat, over = k["latency"], k["overshoot"]
        print_table(["kills", "breach->dead p50 ms", "p90", "p99", "max", "measured/limit p50", "max"],
                    [[len(lat), fmt_ms(pct(lat, 50)), fmt_ms(pct(lat, 90)), fmt_ms(pct(lat, 99)),
                      fmt_ms(max(lat) if lat else float("nan")), f"{pct(over, 50):.2f}",
                      f"{max(over) if over else float('nan'):.2f}"]],
                    title=f"Memory limit {args.kill_limit} MiB: hog allocating 16 MiB every 10 ms")
    print_machine("end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
