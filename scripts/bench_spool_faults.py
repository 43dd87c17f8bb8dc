"""The spool's cost inside a tracked agent loop: time per append and the page faults appends take.

``Spool.append`` is timed where it runs for real: in the agent loop of ``bench_tracking_parts.py`` (variant
``emit``: the tracker's events go to a real ``Channel.emit`` and its spool in a temporary directory, acknowledged
between blocks of 20 turns as the channel thread would; ``--never-empty``: as in a runner emitting without a pause,
whose acks always find newer events unacknowledged, so its spool is never emptied and only grows). A micro-benchmark
of appends alone says ~0.5-0.9 us; in the loop, with the workflow's own work between emits, an append costs several
times that, and one that takes a page fault far more. Each append is wrapped: wall time (``perf_counter``) and
whether the thread's minor-fault count moved (``getrusage``; the wrapper's own cost, ~1 us, is in every figure
alike).

With ``--baseline DIR`` (a checkout of other code with a ``labd`` package, e.g. made with ``git archive``), the same
loop runs from that tree too, each tree in a fresh interpreter, alternated ``--rounds`` times, so both see the same
box. Prints per tree: us of spool appends per turn, us per append, appends that took a fault and what those cost.
Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import asyncio, itertools, json, resource, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/scripts"]
import labd.runner.spool as spool_module
turns, warm = int(sys.argv[2]), int(sys.argv[3])
if sys.argv[4] == "never-empty":  # as in a runner whose acks always find newer events unacknowledged
    spool_module.Spool.behind_acks = lambda self, first_seq, *unacked: None
orig = spool_module.Spool.append
stats = {"appends": 0, "secs": 0.0, "faulting": 0, "fault_secs": 0.0}
def append(self, seq, body, _ru=resource.getrusage, _who=resource.RUSAGE_THREAD, _now=time.perf_counter):
    before = _ru(_who).ru_minflt
    t = _now()
    orig(self, seq, body)
    spent = _now() - t
    stats["appends"] += 1
    stats["secs"] += spent
    if _ru(_who).ru_minflt != before:
        stats["faulting"] += 1
        stats["fault_secs"] += spent
spool_module.Spool.append = append
from bench_tracking_parts import build
async def main():
    agent, _, between = build("emit", Path(tempfile.mkdtemp(prefix="labd-bench-")))
    for _ in range(warm):
        await agent.ask("warm")
    between()
    for key in stats:
        stats[key] = 0
    counter = itertools.count()
    for _ in range(turns // 20):
        for _ in range(20):
            await agent.ask(f"turn {next(counter)}")
        between()
    stats["turns"] = turns // 20 * 20
    print(json.dumps(stats))
asyncio.run(main())
"""


def run(tree: Path, turns: int, warm: int, never_empty: bool) -> dict[str, float]:
    """One fresh interpreter running the loop from ``tree``; its counters."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(turns), str(warm),
                          "never-empty" if never_empty else "acked"], check=True,
                         capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=2000, help="measured agent turns per run (default 2000)")
    ap.add_argument("--warm", type=int, default=200, help="unmeasured turns first (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per tree, alternated (default 3)")
    ap.add_argument("--baseline", type=Path, help="another tree to compare with, side by side")
    ap.add_argument("--never-empty", action="store_true",
                    help="the spool is never emptied behind the acks (a runner emitting without pause: each ack "
                         "finds newer events unacknowledged), so it only grows")
    args = ap.parse_args()
    sys.path[:0] = [str(HERE)]
    from bench_common import print_machine, print_table

    print_machine()
    trees = {"this tree": HERE.parent}
    if args.baseline is not None:
        if not (args.baseline / "labd").is_dir():
            ap.error(f"{args.baseline} has no labd package")
        trees["baseline"] = args.baseline.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            res = run(tree, args.turns, args.warm, args.never_empty)
            results[name].append(res)
            print(f"round {r + 1}, {name}: {res['secs'] / res['turns'] * 1e6:.1f} us of appends per turn, "
                  f"{res['faulting']} of {res['appends']} appends took a page fault", flush=True)
    rows = []
    for name, runs in results.items():
        def med(figure: Callable[[dict[str, float]], float], runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(figure(x) for x in runs)
        rows.append([name, f"{med(lambda x: x['secs'] / x['turns'] * 1e6):.1f}",
                     f"{med(lambda x: x['secs'] / x['appends'] * 1e6):.2f}",
                     f"{med(lambda x: x['faulting'] / x['turns'] * 100):.1f}",
                     f"{med(lambda x: x['fault_secs'] / max(x['faulting'], 1) * 1e6):.1f}",
                     f"{med(lambda x: (x['secs'] - x['fault_secs']) / max(x['appends'] - x['faulting'], 1) * 1e6):.2f}"
                     ])
    print()
    print_table(["tree", "us of appends per turn", "us per append", "faulting appends per 100 turns",
                 "us per faulting append", "us per other append"], rows,
                title=f"Spool.append in the tracked agent loop{', never emptied' if args.never_empty else ''}, "
                      f"medians of {args.rounds} runs of {args.turns} turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
