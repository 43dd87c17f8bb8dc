#!/usr/bin/env python
"""Soak: thousands of short sessions through one daemon, and what the daemon holds afterwards.

A daemon runs for weeks under systemd. Whatever it keeps per session and never drops grows with every session it
ever ran. This script starts one real ``labd serve`` on a temp home and runs ``--rounds`` rounds of ``--per-round``
short sessions (``demo.count``, one line each; started from one client, then waited for), printing after each
round the daemon's RSS, open file descriptors and threads, and the store's size. A daemon that keeps nothing per
ended session levels off (SQLite's page caches and the allocator's arenas fill up to their sizes in the first
thousands of sessions); a steady climb per round is a leak to look for (``tracemalloc`` in a daemon started from
Python: ``labd.daemon.main.serve``; docs/reliability.md, "A daemon's memory after thousands of sessions").

Nothing asserts: figures are printed (docs/reliability.md records a run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import BenchDaemon, interrupt_on_sigterm, print_machine, print_table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    ap.add_argument("--per-round", type=int, default=250, help="sessions per round (default 250)")
    args = ap.parse_args()
    if args.rounds < 1 or args.per_round < 1:
        ap.error("--rounds and --per-round must be at least 1")
    import psutil

    interrupt_on_sigterm()
    print_machine()
    rows = []
    with BenchDaemon() as d, d.client(timeout=60) as c:
        proc = psutil.Process(d.pid)
        first_rss = proc.memory_info().rss
        for rnd in range(1, args.rounds + 1):
            t0 = time.monotonic()
            sids = [c.start("demo.count", params={"n": 1, "delay": 0}) for _ in range(args.per_round)]
            statuses = d.wait_ended(sids, timeout=600)
            failed = sum(1 for s in statuses.values() if s != "completed")
            rss = proc.memory_info().rss
            db = sum(p.stat().st_size for p in d.home.glob("labd.db*"))
            rows.append([rnd, rnd * args.per_round, f"{time.monotonic() - t0:.1f}", f"{rss / 2**20:.1f}",
                         f"{(rss - first_rss) / 2**20:+.1f}", proc.num_fds(), proc.num_threads(),
                         f"{db / 2**20:.1f}", failed])
            print("  ".join(str(x) for x in rows[-1]), flush=True)
    print()
    print_table(["round", "sessions", "s", "daemon RSS MiB", "since start", "fds", "threads", "store MiB",
                 "not completed"], rows, title="one daemon, short sessions run to their end, round after round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
