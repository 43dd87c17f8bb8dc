#!/usr/bin/env python
"""Events from forked children: the relay (runner/forked.py) against the runner's own emit, in one run.

Two workflows emit the same ``procs`` x ``n`` small custom events ``tick``:

* **runner**: the workflow's own thread emits them all (the channel's hot path);
* **children**: the workflow forks ``procs`` children (``os.fork``) that emit ``n`` each at once; each event goes
  over the relay's socket pair to the runner's ``labd-forked`` thread, which emits it on the channel.

Rate = ticks persisted / (the runner's ``session.started`` -> the daemon's ``session.ended``). Each round runs both,
alternated, on one daemon; medians over ``--rounds``. Loss check: every tick stored once, each child's in its order.
Prints the figures and the ratio; nothing asserts on timing (noisy shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import BenchDaemon, fmt_rate, interrupt_on_sigterm, print_machine, print_table, ratio  # noqa: E402

FLOWS = textwrap.dedent('''
    import os


    def in_runner(ctx, n: int = 50000, procs: int = 4) -> int:
        for k in range(procs):
            for i in range(n):
                ctx.emit("tick", {"k": k, "i": i})
        return procs * n


    def in_children(ctx, n: int = 50000, procs: int = 4) -> int:
        pids = []
        for k in range(procs):
            pid = os.fork()
            if pid == 0:
                for i in range(n):
                    ctx.emit("tick", {"k": k, "i": i})
                os._exit(0)
            pids.append(pid)
        bad = 0
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            bad += os.waitstatus_to_exitcode(status) != 0
        return procs * n if not bad else -bad
''')


def run_one(d: BenchDaemon, flows: str, fn: str, n: int, procs: int) -> dict[str, float | int | bool]:
    """One session of ``fn``: its rate and the loss check."""
    with d.client() as c:
        sid = c.start(f"{flows}:{fn}", params={"n": n, "procs": procs})
        d.remember_runner(c.session(sid).get("pid"))
        status = d.wait_ended([sid], timeout=600, interval=0.02)[sid]
    conn = d.db()
    try:
        started = conn.execute("SELECT ts FROM events WHERE session_id=? AND kind='session.started'",
                               (sid,)).fetchone()[0]
        ended = conn.execute("SELECT ended_at FROM sessions WHERE id=?", (sid,)).fetchone()[0]
        seen: dict[int, list[int]] = {}
        for (payload,) in conn.execute("SELECT payload FROM events WHERE session_id=? AND kind='custom' ORDER BY seq",
                                       (sid,)):
            data = orjson.loads(payload)["data"]
            seen.setdefault(data["k"], []).append(data["i"])
    finally:
        conn.close()
    complete = status == "completed" and sorted(seen) == list(range(procs)) and all(
        v == list(range(n)) for v in seen.values())
    stored = sum(len(v) for v in seen.values())
    return {"rate": stored / max(1e-9, ended - started), "stored": stored, "complete": complete}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50_000, help="ticks per process (default 50000)")
    ap.add_argument("--procs", type=int, default=4, help="children (and blocks of the runner's loop), default 4")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running both workflows (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temp home")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine()
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, float | int | bool]]] = {"in_runner": [], "in_children": []}
    with BenchDaemon(keep=args.keep) as d:
        flows = d.tmp / "forkbench.py"
        flows.write_text(FLOWS)
        for r in range(args.rounds):
            order = ("in_runner", "in_children") if r % 2 == 0 else ("in_children", "in_runner")
            for fn in order:
                res = run_one(d, str(flows), fn, args.n, args.procs)
                results[fn].append(res)
                print(f"round {r + 1} {fn:<12} {fmt_rate(float(res['rate']))} events/s, "
                      f"{res['stored']:,} stored, complete: {res['complete']}", flush=True)
    med = {fn: statistics.median(float(x["rate"]) for x in rs) for fn, rs in results.items()}
    print_table(("emitted by", "events/s (median)", "vs the runner's own", "all stored, in order"), [
        ("the workflow's thread (runner)", fmt_rate(med["in_runner"]), "1.00x",
         all(x["complete"] for x in results["in_runner"])),
        (f"{args.procs} forked children (relay)", fmt_rate(med["in_children"]),
         ratio(med["in_children"], med["in_runner"]), all(x["complete"] for x in results["in_children"])),
    ], title=f"{args.procs} x {args.n:,} events, {args.rounds} rounds")
    print(f"(total {time.perf_counter() - t0:.1f}s)")
    return 0 if all(x["complete"] for rs in results.values() for x in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
