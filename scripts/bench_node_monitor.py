"""What a Ray session's node monitor costs its node (runner/node_monitor.py), by the limits it enforces: none (one pass
per record interval), a memory limit (a pass every 0.1 s), a CPU limit (a pass every 50 ms, and the throttle's
SIGSTOP/SIGCONT), each on a real child process, idle or busy, alternated in rounds in one run.

Prints the monitor's CPU as a percentage of one core (this process's CPU time while only the monitor thread works:
the main thread waits) and, for the busy child, the share of a core the child got. Nothing asserts on timing.

    .venv/bin/python scripts/bench_node_monitor.py [--seconds 5] [--rounds 3] [--children 0]

``--children N``: the watched process first starts N idle children (a runner whose code forked workers: every pass
walks the whole tree).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

import psutil
from bench_common import print_machine, print_table

from labd.runner.node_monitor import NodeMonitor

IDLE = "import time\nprint('ready', flush=True)\ntime.sleep(3600)"
BUSY = "print('ready', flush=True)\nwhile True: pass"
FORK = ("import subprocess, sys\nkids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])"
        " for _ in range({n})]\n")


def _child(code: str, children: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", FORK.format(n=children) + code], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def one(limits: dict[str, float], busy: bool, seconds: float, children: int) -> tuple[float, float]:
    """(the monitor's CPU in % of a core, the child's share of a core in %) over ``seconds``."""
    proc = _child(BUSY if busy else IDLE, children)
    try:
        ps = psutil.Process(proc.pid)
        m = NodeMonitor(proc.pid, dict(limits), time.time())
        m.start()
        time.sleep(0.5)  # the first passes (and the child's first stop) before the window
        c0, k0, t0 = time.process_time(), sum(ps.cpu_times()[:2]), time.monotonic()
        threading.Event().wait(seconds)
        c1, k1, t1 = time.process_time(), sum(ps.cpu_times()[:2]), time.monotonic()
        m.stop()
        m.join(5)
        return (c1 - c0) / (t1 - t0) * 100, (k1 - k0) / (t1 - t0) * 100
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--children", type=int, default=0)
    args = ap.parse_args()
    print_machine(f"node monitor, {args.rounds} rounds of {args.seconds:.0f} s, {args.children} children")
    cases = [("no limit, idle child", {}, False), ("--memory, idle child", {"memory": 1 << 30}, False),
             ("--cpu 30%, idle child", {"cpu": 30.0}, False), ("--cpu 30%, busy child", {"cpu": 30.0}, True),
             ("no limit, busy child", {}, True)]
    got: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
    for _ in range(args.rounds):
        for name, limits, busy in cases:
            got[name].append(one(limits, busy, args.seconds, args.children))
    rows = [[name, f"{statistics.median(m for m, _ in got[name]):.2f} %",
             f"{statistics.median(c for _, c in got[name]):.1f} %"] for name, _, _ in cases]
    print_table(["case", "monitor CPU (of a core)", "child's CPU"], rows)


if __name__ == "__main__":
    main()
