"""What one refresh of ``labd top``'s DAG tab costs the daemon, for one long session (docs/benchmarks.md §48).

The tab refreshes after each change of the followed session (at most once per poll, ~1 s). It read the session's
whole record: ``session.dag``, ``session.cost`` and ``session.files`` (``whole``); it now reads the newest 1,000
nodes and the files recorded since the oldest of them started (``newest``: the feed's own ``_dag_of``). Both are
run against session SESSION on the daemon of HOME (its ``XDG_RUNTIME_DIR`` set as the daemon's), alternated for
ROUNDS rounds: wall time per refresh, the replies' bytes, and the daemon's CPU time per refresh (psutil, the
daemon's pid from ``ping``). Build the record first, e.g. ``labd run demo.count -p n=30000 -p delay=0 --wait``.

Usage: ``python scripts/bench_top_dag.py HOME SESSION [ROUNDS]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import psutil

import labd
from labd.frontends.top.feed import _dag_of

if len(sys.argv) not in (3, 4):
    raise SystemExit(__doc__)
home, sid = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) == 4 else 5


def whole(c: labd.Client) -> list[Any]:
    """The tab's refresh before: the whole graph, every call's cost and the whole file history."""
    return [c.dag(sid)["dag"], c.cost(sid), c.files(sid)]


def newest(c: labd.Client) -> list[Any]:
    """The tab's refresh now."""
    return list(_dag_of(c, sid))


c = labd.Client(home, timeout=300)
daemon = psutil.Process(c.ping()["pid"])
figures: dict[str, list[tuple[float, float, int]]] = {"whole": [], "newest": []}
ways: dict[str, Callable[[labd.Client], list[Any]]] = {"whole": whole, "newest": newest}
for rnd in range(rounds):
    for name in (("whole", "newest") if rnd % 2 == 0 else ("newest", "whole")):
        cpu0, t0 = sum(daemon.cpu_times()[:2]), time.monotonic()
        replies = ways[name](c)
        wall, cpu = time.monotonic() - t0, sum(daemon.cpu_times()[:2]) - cpu0
        figures[name].append((wall, cpu, sum(len(orjson.dumps(r)) for r in replies)))
        print(f"round {rnd} {name}: {wall:.3f} s, daemon CPU {cpu:.3f} s, {figures[name][-1][2] / 1e6:.2f} MB")
med = {k: (statistics.median(f[0] for f in v), statistics.median(f[1] for f in v), v[0][2])
       for k, v in figures.items()}
for k, (wall, cpu, size) in med.items():
    print(f"{k}: median {wall:.3f} s a refresh, daemon CPU {cpu:.3f} s, {size / 1e6:.2f} MB")
print(f"newest / whole: wall {med['newest'][0] / med['whole'][0]:.3f}x, daemon CPU "
      f"{med['newest'][1] / max(med['whole'][1], 1e-9):.3f}x, bytes {med['newest'][2] / med['whole'][2]:.3f}x")
