#!/usr/bin/env python
"""What shipping checkpoint objects home costs a remote (Ray) runner's durable steps, side by side in one process.

A remote runner ships, before each ``step.checkpoint``, every object the checkpoint wrote (``checkpoint.object``
events: base64 chunks through the runner channel), so a resume or branch can be made at home; after it, as before,
the files that changed (``file.shipped``). This measures that on the runner's side, with a real runner channel and
spool (thread not started: emit encodes and spools, as on the workflow's thread; between blocks, not timed, the
backlog is acknowledged as the channel thread would):

- ``files only``: a step changes one file, is checkpointed, and its changed files are shipped (a Ray runner before
  2026-12-07);
- ``files + objects, bytes twice``: the same, with the checkpoint's objects shipped first and each file's bytes
  shipped again (2026-12-07, §60);
- ``objects, files as ranges``: the objects shipped first, each file as ranges of them without its bytes (now).

Blocks of the three rotate (each pair of rounds in opposite orders), each ``--steps`` steps in a fresh work directory;
the median of the per-round ratios of the calling thread's CPU time to ``files only`` is reported, with the bytes each
variant emits per step. Then the home's side of each block, on the same thread: what ingest's ``receive_object`` and
``receive`` do with those events (objects written and digest-checked, files written from the bytes sent or copied
from the objects), CPU per step. Nothing asserts on timing. The transport is not in these figures.

    .venv/bin/python scripts/bench_ship_objects.py --pairs 20 --steps 40 --size 65536
    .venv/bin/python scripts/bench_ship_objects.py --pairs 5 --steps 20 --size 65536 --grow 8388608
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

VARIANTS = ("files only (before)", "files + objects, bytes twice (§60)", "objects, files as ranges (now)")


def block(base: Path, variant: int, steps: int, size: int, grow: int = 0) -> tuple[float, int, float]:
    """One block: ``steps`` checkpointed steps, each changing one ``size``-byte file (with ``grow``: appending ``size``
    bytes to one log that starts at ``grow`` bytes); (runner CPU seconds, bytes emitted, home CPU seconds)."""
    from labd.daemon.shipped import receive, receive_object
    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper

    work = Path(tempfile.mkdtemp(dir=base)) / "work"
    work.mkdir()
    emit, between = bare_channel(work.parent / "spool")
    sent = [0]
    shipped: list[tuple[str, dict[str, Any]]] = []

    def counted(kind: str, payload: dict[str, Any], node: Any = None, parent: Any = None) -> int:
        if kind in ("checkpoint.object", "file.shipped"):
            sent[0] += len(payload.get("data") or "")
            shipped.append((kind, payload))
        return emit(kind, payload, node, parent)

    tracker = FileTracker(work, counted)
    durable = Durable(counted, work.parent, work, tracker, list_objects=variant > 0)
    shipper = Shipper(work, counted, 1 << 40, ranges=True)
    durable.after_checkpoint = shipper.ship
    if variant > 0:
        durable.before_checkpoint = lambda: shipper.ship_objects(durable.objects)
    if variant == 1:  # as before files went as ranges: every file with its bytes
        shipper._at_home = lambda objects, digest: False  # type: ignore[method-assign]  # noqa: SLF001
    if grow:
        (work / "log.bin").write_bytes(os.urandom(grow))
    start = time.thread_time()
    for i in range(steps):
        if grow:
            with open(work / "log.bin", "ab") as f:
                f.write(os.urandom(size))
        else:
            (work / f"f{i % 8}.bin").write_bytes(os.urandom(size))
        tracker.scan(f"n{i}")
        durable.checkpoint(f"n{i}", str(i), f"step {i}", {"i": i})
    took = time.thread_time() - start
    between()
    home = work.parent.parent / f"{work.parent.name}-home"
    home.mkdir()
    start = time.thread_time()
    for kind, payload in shipped:  # as ingest does, in order
        got = (receive_object if kind == "checkpoint.object" else receive)(home, "s", payload)
        if "error" in got:
            raise SystemExit(f"the home refused a {kind}: {got['error']}")
    return took, sent[0], time.thread_time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20, help="ABBA pairs of blocks (default 20)")
    ap.add_argument("--steps", type=int, default=40, help="checkpointed steps per block (default 40)")
    ap.add_argument("--size", type=int, default=65536, help="bytes of the file each step changes (default 65536)")
    ap.add_argument("--grow", type=int, default=0, metavar="BYTES",
                    help="instead: each step appends --size bytes to one log that starts at BYTES (a file past 4 MiB "
                         "is checkpointed in 1 MiB chunks)")
    args = ap.parse_args()
    what = (f"{args.size:,} bytes appended per step to a log of {args.grow:,}" if args.grow
            else f"one {args.size:,}-byte file changed per step")
    print_machine(f"{args.pairs} pairs x {args.steps} steps, {what}")
    base = Path(tempfile.mkdtemp(prefix="labd-bench-ship-"))
    for v in range(len(VARIANTS)):  # warm every path
        block(base, v, 5, args.size, args.grow)
    ratios: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {v: [] for v in range(len(VARIANTS))}
    home_cpu: dict[int, list[float]] = {v: [] for v in range(len(VARIANTS))}
    sent = dict.fromkeys(range(len(VARIANTS)), 0)
    for p in range(args.pairs):
        got = {}
        for v in ((0, 1, 2) if p % 2 == 0 else (2, 1, 0)):
            got[v] = block(base, v, args.steps, args.size, args.grow)
            cpu[v].append(got[v][0] / args.steps)
            sent[v] = got[v][1] // args.steps
            home_cpu[v].append(got[v][2] / args.steps)
        for v in (1, 2):
            ratios[v].append(got[v][0] / got[0][0])

    def vs_files(v: int) -> str:
        if v == 0:
            return "1"
        q = statistics.quantiles(ratios[v], n=4)
        return f"{statistics.median(ratios[v]):.2f}x ({q[0]:.2f}-{q[2]:.2f})"

    rows = [[name, f"{statistics.median(cpu[v]) * 1e6:,.0f} us", vs_files(v), f"{sent[v]:,}",
             f"{statistics.median(home_cpu[v]) * 1e6:,.0f} us"] for v, name in enumerate(VARIANTS)]
    print_table(["variant", "runner CPU per step (median)", "vs files only (median of rounds, IQR)",
                 "base64 bytes emitted per step", "home CPU per step (median)"], rows,
                title="a remote runner's checkpointed step: its calling thread, and what ingest does with it at home")
    return 0


if __name__ == "__main__":
    sys.exit(main())
