#!/usr/bin/env python
"""What the session's output cap costs a workflow's custom events and log records, side by side in one process.

A real runner channel with its spool (thread not started: emit encodes and spools, as on a workflow's thread; between
blocks, not timed, the backlog is acknowledged as the channel thread would) emits small ``custom`` events three ways:

- ``no cap``: ``Channel.emit`` alone (a session with ``--output unlimited``; labd's own events);
- ``sized apart``: ``OutputCap.admit`` then ``Channel.emit``: the payload is encoded once to size it and once more to
  record it (how the runner charged the cap before, and still does for a forked child's events);
- ``charged in emit``: ``Channel.emit(..., cap=)``, which charges the bytes it has just encoded (how the runner
  charges a workflow's events now).

The cap is the default 1 GiB (never reached here). Blocks of the three are interleaved in rotating order and the
median CPU time per event of the emitting thread taken, so the box's drift hits all alike. Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import bare_channel, print_machine, print_table, ratio  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="events per block (default 20000)")
    ap.add_argument("--blocks", type=int, default=15, help="blocks of each way (medians; default 15)")
    args = ap.parse_args()
    from labd.runner.outputcap import OutputCap

    print_machine(f"n={args.n:,} per block, {args.blocks} blocks each")
    payload = {"name": "tick", "data": {"i": 1, "note": "a short custom event"}}
    with tempfile.TemporaryDirectory(prefix="labd-bench-cap-") as tmp:
        emit, between = bare_channel(Path(tmp) / "events.spool")
        cap = OutputCap(1 << 30)
        admit = cap.admit

        def no_cap() -> None:
            for _ in range(args.n):
                emit("custom", payload, "n1")

        def sized_apart() -> None:
            for _ in range(args.n):
                if admit("custom", payload):
                    emit("custom", payload, "n1")

        def charged() -> None:
            for _ in range(args.n):
                emit("custom", payload, "n1", cap=cap)

        ways = {"no cap": no_cap, "sized apart (before)": sized_apart, "charged in emit (now)": charged}
        times: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for b in range(args.blocks):
            for name in names[b % 3:] + names[:b % 3]:
                t0 = time.thread_time()
                ways[name]()
                times[name].append((time.thread_time() - t0) / args.n * 1e6)
                between()
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["no cap"]
    print_table(["custom event via", "us per event (median)", "vs no cap", "the cap's own cost"],
                [[name, f"{m:.2f}", ratio(m, base), f"{m - base:+.2f} us"] for name, m in med.items()],
                title="Channel.emit under the output cap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
