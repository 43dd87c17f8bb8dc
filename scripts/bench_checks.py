#!/usr/bin/env python
"""Workflow checks: how long the runner template takes to check a user's workflow (docs/design.md, "Workflow checks
never hold up the daemon").

Method. Two real templates (``TemplateLauncher``), one with its warm checker child (``spare_runners = 1``, the
default) and one forking a child per check (``spare_runners = 0``), alternated check by check. A check of a
one-function module in a temp directory (import, resolve, bind ``n="2"``) is timed from ``inspect_start`` to its
answer in ``drain_inspected``, as the daemon's main loop sees it. Beside it, the check's own work in this process
(``labd.runner.checks.check_workflow``). Prints p50/p90 and the ratio; the box is shared: read the ratio.
End to end, a user's workflow's first output beside a built-in one: ``bench_start.py --own N``.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import fmt_ms, print_machine, print_table, ratio, summary  # noqa: E402

from labd.daemon.template_launcher import TemplateLauncher  # noqa: E402
from labd.runner.checks import check_workflow  # noqa: E402

MODULE = "def count(ctx, n: int = 2, delay: float = 0.2):\n    print(n)\n"


def one_check(launcher: TemplateLauncher, where: str) -> float:
    t0 = time.perf_counter()
    req = launcher.inspect_start("benchchecks:count", {"n": "2"}, [where])
    while True:
        fd = launcher.fileno()
        if fd is not None:
            select.select([fd], [], [], 1.0)
        answers = dict(launcher.drain_inspected())
        if req in answers:
            if not answers[req].get("ok"):
                raise RuntimeError(f"check failed: {answers[req]}")
            return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=40, help="checks per template (default 40)")
    ap.add_argument("--pause", type=float, default=0.15,
                    help="seconds between checks: the warm checker is forked again after each (default 0.15)")
    args = ap.parse_args()
    print_machine(f"{args.n} checks per template")
    where = tempfile.mkdtemp(prefix="labd-checks-")
    with open(os.path.join(where, "benchchecks.py"), "w") as f:
        f.write(MODULE)
    launchers = {"warm checker": TemplateLauncher(spare_runners=1), "fork per check": TemplateLauncher(spare_runners=0)}
    samples: dict[str, list[float]] = {name: [] for name in launchers}
    try:
        for launcher in launchers.values():
            launcher.start()
        time.sleep(1.0)  # the warm checker (and spare) are forked shortly after the template's start
        for i in range(args.n + 3):  # 3 untimed rounds first
            for name, launcher in launchers.items():
                took = one_check(launcher, where)
                if i >= 3:
                    samples[name].append(took)
                time.sleep(args.pause)
    finally:
        for launcher in launchers.values():
            launcher.shutdown()
    check_workflow("demo.count", {"n": "1"}, [])  # warm, as a checker is: then time the check itself
    t0 = time.perf_counter()
    check_workflow("benchchecks:count", {"n": "2"}, [where])
    own = time.perf_counter() - t0
    warm, fork = summary(samples["warm checker"]), summary(samples["fork per check"])
    print_table(["template", "p50", "p90", "p99"],
                [[name, fmt_ms(s["p50"]), fmt_ms(s["p90"]), fmt_ms(s["p99"])]
                 for name, s in (("warm checker (default)", warm), ("fork per check", fork))],
                title="\ncheck of a user's workflow, request -> answer (ms)")
    print(f"warm / fork p50: {ratio(warm['p50'], fork['p50'])}; the check's own work in this process: "
          f"{fmt_ms(own)} ms (import of the module, resolve, bind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
