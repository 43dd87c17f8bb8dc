#!/usr/bin/env python
"""What shipping checkpoint objects home costs a remote (Ray) runner's durable steps, side by side in one process.

A remote runner ships, before each ``step.checkpoint``, every object the checkpoint wrote (``checkpoint.object``
events: base64 chunks through the runner channel), so a resume or branch can be made at home; after it, as before,
the files that changed (``file.shipped``). This measures that on the runner's side, with a real runner channel and
spool (thread not started: emit encodes and spools, as on the workflow's thread; between blocks, not timed, the
backlog is acknowledged as the channel thread would):

- ``files only``: a step changes one file, is checkpointed, and its changed files are shipped (a Ray runner before
  2026-12-07);
- ``files + objects``: the same, with the checkpoint's objects shipped first (now).

Blocks of the two alternate (ABBA), each ``--steps`` steps in a fresh work directory; the median of the per-pair
ratios of the calling thread's CPU time is reported, with the bytes each variant emits per step. Nothing asserts on
timing. The transport and the daemon's side (ingest writes the objects) are not in this figure.

    .venv/bin/python scripts/bench_ship_objects.py --pairs 20 --steps 40 --size 65536
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import bare_channel, print_machine, print_table  # noqa: E402


def block(base: Path, objects: bool, steps: int, size: int) -> tuple[float, int]:
    """One block: ``steps`` checkpointed steps, each changing one ``size``-byte file; (CPU seconds, bytes emitted)."""
    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper

    work = Path(tempfile.mkdtemp(dir=base)) / "work"
    work.mkdir()
    emit, between = bare_channel(work.parent / "spool")
    sent = [0]

    def counted(kind: str, payload: dict[str, Any], node: Any = None, parent: Any = None) -> int:
        if kind in ("checkpoint.object", "file.shipped"):
            sent[0] += len(payload.get("data") or "")
        return emit(kind, payload, node, parent)

    tracker = FileTracker(work, counted)
    durable = Durable(counted, work.parent, work, tracker, list_objects=objects)
    shipper = Shipper(work, counted, 1 << 40)
    durable.after_checkpoint = shipper.ship
    if objects:
        durable.before_checkpoint = lambda: shipper.ship_objects(durable.objects)
    start = time.thread_time()
    for i in range(steps):
        (work / f"f{i % 8}.bin").write_bytes(os.urandom(size))
        tracker.scan(f"n{i}")
        durable.checkpoint(f"n{i}", str(i), f"step {i}", {"i": i})
    took = time.thread_time() - start
    between()
    return took, sent[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20, help="ABBA pairs of blocks (default 20)")
    ap.add_argument("--steps", type=int, default=40, help="checkpointed steps per block (default 40)")
    ap.add_argument("--size", type=int, default=65536, help="bytes of the file each step changes (default 65536)")
    args = ap.parse_args()
    print_machine(f"{args.pairs} pairs x {args.steps} steps, one {args.size:,}-byte file changed per step")
    base = Path(tempfile.mkdtemp(prefix="labd-bench-ship-"))
    block(base, True, 5, args.size)  # warm both paths
    block(base, False, 5, args.size)
    ratios, cpu, sent = [], {False: [], True: []}, {False: 0, True: 0}
    for p in range(args.pairs):
        got = {}
        for objects in ((False, True) if p % 2 == 0 else (True, False)):
            got[objects] = block(base, objects, args.steps, args.size)
            cpu[objects].append(got[objects][0] / args.steps)
            sent[objects] = got[objects][1] // args.steps
        ratios.append(got[True][0] / got[False][0])
    rows = [[name, f"{statistics.median(cpu[v]) * 1e6:,.0f} us", f"{sent[v]:,}"]
            for name, v in (("files only (before)", False), ("files + objects (now)", True))]
    print_table(["variant", "CPU per step (median)", "base64 bytes emitted per step"], rows,
                title="a remote runner's checkpointed step, calling thread")
    q = statistics.quantiles(ratios, n=4)
    print(f"\nfiles + objects / files only: median {statistics.median(ratios):.2f}x (IQR {q[0]:.2f}-{q[2]:.2f}x, "
          f"{len(ratios)} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
