#!/usr/bin/env python
"""Daemon start: ``labd serve`` launched -> it answers a request, and -> its first session has ended.

What a restart costs an administrator (systemd restarts the daemon; clients wait for it) and what every integration
test that starts a daemon pays. Measured for this tree against git revision ``--base REF`` (default ``HEAD~1``),
rounds alternated in one run (the machine is shared and noisy: read the ratios):

- ``ready``: ``Popen`` -> the first ``ping`` answered (polled every 50 ms, as the test suite's fixtures do);
- ``first session``: ``Popen`` -> a ``demo.count`` session started right after ``ready`` has ended (the runner
  template must be ready for it to launch).

The base is exported with ``git archive`` and put first on its daemon's ``PYTHONPATH`` (scripts/bench_start.py's
``export_base``), so its daemon, template and runners are all the base's code.

    .venv/bin/python scripts/bench_daemon_start.py --rounds 8 --base HEAD~1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # noqa: E402
from bench_common import BenchDaemon, fmt_ms, print_machine, print_table, summary  # noqa: E402
from bench_start import code_from, export_base  # noqa: E402


def one(root: str | None) -> tuple[float, float]:
    """(seconds to ready, seconds to the first session's end) of one daemon of the tree at ``root``."""
    t0 = time.monotonic()
    with code_from(root), BenchDaemon(quiet=True) as d:
        ready = time.monotonic() - t0
        with d.client(timeout=60) as c:
            sid = c.start("demo.count", params={"n": 1})
            status = c.wait(sid, timeout=60)["status"]
        first = time.monotonic() - t0
    if status != "completed":
        raise RuntimeError(f"the first session ended {status}")
    return ready, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8, help="daemon starts per side (default 8)")
    ap.add_argument("--base", metavar="REF", default="HEAD~1", help="git revision to compare with (default HEAD~1)")
    args = ap.parse_args()
    bench_common.interrupt_on_sigterm()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="labd-base-") as tmp:
        root = export_base(args.base, tmp)
        sides = {"this tree": None, f"base {args.base}": root}
        got: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in sides}
        one(None)  # warm the page cache for both trees before any round counts
        one(root)
        for i in range(args.rounds):
            order = list(sides.items()) if i % 2 == 0 else list(reversed(sides.items()))
            for name, tree in order:
                ready, first = one(tree)
                got[name][0].append(ready)
                got[name][1].append(first)
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(
                f"{n} {fmt_ms(got[n][0][-1])}/{fmt_ms(got[n][1][-1])}" for n in sides), flush=True)
    rows = []
    for name in sides:
        r, f = summary(got[name][0]), summary(got[name][1])
        rows.append([name, fmt_ms(r["p50"]), fmt_ms(r["p90"]), fmt_ms(f["p50"]), fmt_ms(f["p90"])])
    print_table(["code", "ready p50", "ready p90", "first session p50", "first session p90"], rows,
                title="labd serve -> ready, and -> first session ended")
    names = list(sides)
    r_this, r_base = summary(got[names[0]][0])["p50"], summary(got[names[1]][0])["p50"]
    f_this, f_base = summary(got[names[0]][1])["p50"], summary(got[names[1]][1])["p50"]
    print(f"ready: this tree takes {r_this / r_base:.2f}x the base's time; first session: {f_this / f_base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
