"""Reads of one long session's whole record, and what other clients get meanwhile (docs/benchmarks.md §46).

For each of ``session.get``, ``session.dag``, ``session.cost``, ``session.checkpoints`` and ``session.history`` of
session SESSION on the daemon of HOME (its ``XDG_RUNTIME_DIR`` set as the daemon's), twice: the request's time and
reply size, and meanwhile, on another connection, how many ``session.list`` requests were answered and the slowest
of them (a read on the daemon's request loop holds them all until it is done). Build the record first, e.g.
``labd run demo.count -p n=30000 -p delay=0 --wait``; compare two trees by serving the same home with each in turn
(another tree: ``PYTHONPATH=<git archive of it, labd/{daemon,runner,ipc,store,frontends} linked to its folders>``).

Usage: ``python scripts/bench_big_record.py HOME SESSION LABEL``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import sys
import threading
import time

import orjson

import labd

if len(sys.argv) != 4:
    raise SystemExit(__doc__)
home, sid, label = sys.argv[1], sys.argv[2], sys.argv[3]


def read(req: str, done: dict[str, float]) -> None:
    """``req`` of the session on a connection of its own: its time and its reply's size into ``done``."""
    with labd.Client(home, timeout=120) as o:
        t = time.monotonic()
        r = o.request(req, session=sid)
        done["t"], done["bytes"] = time.monotonic() - t, len(orjson.dumps(r))


c = labd.Client(home, timeout=120)
for req in ("session.get", "session.dag", "session.cost", "session.checkpoints", "session.history"):
    for rnd in range(2):
        done: dict[str, float] = {}
        th = threading.Thread(target=read, args=(req, done))
        th.start()
        time.sleep(0.005)
        worst, n = 0.0, 0
        while th.is_alive():
            t = time.monotonic()
            c.request("session.list", limit=5)
            worst, n = max(worst, time.monotonic() - t), n + 1
        th.join()
        print(f"{label} {req} round {rnd}: {done['t']:.2f} s, reply {done['bytes']/1e6:.1f} MB; "
              f"meanwhile {n} session.list, slowest {worst*1000:.0f} ms")
