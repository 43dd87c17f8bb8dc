"""The first session after a daemon start against the sessions after it, A/B against another tree in one run.

Each round starts a fresh daemon (``BenchDaemon``), waits ``--settle`` seconds (the runner template and its first
spare are up), then starts ``--sessions`` ``demo.count`` sessions of one step, one after the other, each waited for.
Per session it reads, from the record: ``session.created`` (written by the daemon) -> ``session.started`` (the
runner's first event) and -> the first ``output``; both stamps come from one host clock. With ``--base REF`` the
rounds alternate between this checkout and REF's code (``git archive``, as ``bench_start.py --base`` does), so both
are measured in the same minutes. Figures: medians over rounds of the first session's times, and of the later
sessions' medians. Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import BenchDaemon, interrupt_on_sigterm, print_machine, print_table  # noqa: E402
from bench_start import code_from, export_base  # noqa: E402


def one_round(n: int, settle: float) -> list[tuple[float, float]]:
    """(created -> started, created -> first output) in ms of ``n`` sessions on a fresh daemon, in start order."""
    out = []
    with BenchDaemon(quiet=True) as d, d.client(timeout=60) as c:
        time.sleep(settle)  # the template's first spare is warm by then (the start measured is not the daemon's)
        for _ in range(n):
            sid = c.start("demo.count", params={"n": 1, "delay": 0.0})
            c.wait(sid, timeout=60)
            ts: dict[str, float] = {}
            for e in c.history(sid, kinds=["session.created", "session.started", "output"]):
                ts.setdefault(e["kind"], e["ts"])
            out.append(((ts["session.started"] - ts["session.created"]) * 1000,
                        (ts["output"] - ts["session.created"]) * 1000))
            time.sleep(0.3)  # a new spare is forked and warms up between sessions, as between a user's commands
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="fresh daemons per tree (default 6)")
    ap.add_argument("--sessions", type=int, default=6, help="sessions per daemon, the first one included (default 6)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between daemon ready and the first session")
    ap.add_argument("--base", metavar="REF", default=None, help="also run REF's code, rounds alternated")
    args = ap.parse_args()
    if args.sessions < 2:
        ap.error("--sessions must be at least 2 (the first, and some after it)")
    interrupt_on_sigterm()
    print_machine()
    trees: list[tuple[str, str | None]] = [("this tree", None)]
    tmp = None
    if args.base:
        tmp = tempfile.mkdtemp(prefix="labd-base-")
        trees.append((args.base, export_base(args.base, tmp)))
    results: dict[str, list[list[tuple[float, float]]]] = {label: [] for label, _ in trees}
    try:
        for r in range(args.rounds):
            for label, root in (trees if r % 2 == 0 else trees[::-1]):
                with code_from(root):
                    results[label].append(one_round(args.sessions, args.settle))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for label, rounds in results.items():
        first = [x[0] for x in rounds]
        later = [(statistics.median(s for s, _ in x[1:]), statistics.median(o for _, o in x[1:])) for x in rounds]
        f_start, f_out = statistics.median(s for s, _ in first), statistics.median(o for _, o in first)
        l_start, l_out = statistics.median(s for s, _ in later), statistics.median(o for _, o in later)
        rows.append([label, f"{f_start:.1f}", f"{f_out:.1f}", f"{l_start:.1f}", f"{l_out:.1f}",
                     f"{f_out / l_out:.2f}x"])
    print()
    print_table(["tree", "first: started ms", "first: output ms", "later: started ms", "later: output ms",
                 "first / later (output)"], rows,
                title=f"session.created -> runner event, medians of {args.rounds} fresh daemons")
    return 0


if __name__ == "__main__":
    sys.exit(main())
