"""Reads of one long session's whole record, and what other clients get meanwhile (docs/benchmarks.md §46).

For each of ``session.get``, ``session.dag``, ``session.cost``, ``session.checkpoints`` and ``session.history`` of
session SESSION on the daemon of HOME (its ``XDG_RUNTIME_DIR`` set as the daemon's), twice: the request's time and
reply size, and meanwhile, on another connection, how many ``session.list`` requests were answered and the slowest
of them (a read on the daemon's request loop holds them all until it is done). The big read runs in a process of
its own: decoding a 12 MB reply in this one would hold this process's GIL and count as the daemon's stall (~15 ms
of the slowest answer did, §52). Build the record first, e.g.
``labd run demo.count -p n=30000 -p delay=0 --wait``; compare two trees by serving the same home with each in turn
(another tree: ``PYTHONPATH=<git archive of it, labd/{daemon,runner,ipc,store,frontends} linked to its folders>``).

Usage: ``python scripts/bench_big_record.py HOME SESSION LABEL``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time

import labd

if len(sys.argv) != 4:
    raise SystemExit(__doc__)
home, sid, label = sys.argv[1], sys.argv[2], sys.argv[3]


#: the big read, in a process of its own: prints its time and its reply's size
READER = """
import sys, time, orjson, labd
with labd.Client(sys.argv[1], timeout=120) as o:
    print("go", flush=True)
    t = time.monotonic()
    r = o.request(sys.argv[3], session=sys.argv[2])
    print(time.monotonic() - t, len(orjson.dumps(r)))
"""

c = labd.Client(home, timeout=120)
for req in ("session.get", "session.dag", "session.cost", "session.checkpoints", "session.history"):
    for rnd in range(2):
        reader = subprocess.Popen([sys.executable, "-c", READER, home, sid, req], stdout=subprocess.PIPE, text=True)
        assert reader.stdout is not None and reader.stdout.readline() == "go\n"  # its request is on its way
        worst, n = 0.0, 0
        while reader.poll() is None:
            t = time.monotonic()
            c.request("session.list", limit=5)
            worst, n = max(worst, time.monotonic() - t), n + 1
        took, size = (float(x) for x in reader.stdout.read().split())
        reader.wait()
        print(f"{label} {req} round {rnd}: {took:.2f} s, reply {size/1e6:.1f} MB; "
              f"meanwhile {n} session.list, slowest {worst*1000:.0f} ms")
