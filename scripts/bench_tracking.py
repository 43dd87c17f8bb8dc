"""Tracking overhead: the same scripted agent workflow with and without labd's automatic capture.

One run, side by side (alternating, ``--rounds`` times each, medians reported):

1. **untracked**: a labd session whose workflow drives a plain ``ag2.Agent`` on the offline scripted model
   for ``--turns`` turns (no middleware, no events besides the session's own lifecycle);
2. **tracked**: the same loop with the agent built by ``ctx.agent`` — every turn records agent.turn.*,
   llm.request/response, agent.message and cost.recorded events, which the daemon persists;
3. **bare ag2**: the untracked loop in a plain Python process (no labd at all), for reference.

Each workflow times its own loop, in wall time and in CPU time of the whole runner process (all its
threads, so the channel thread's work counts). CPU time is the steadier figure on a shared machine; the
tracked/untracked ratios are the overhead of labd's capture. The persisted events are counted to show
the work was really done. Target (issue 7): <= 5 % overhead.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import BenchDaemon, interrupt_on_sigterm, print_machine, print_table  # noqa: E402

BARE = """
import asyncio, sys, time
from ag2 import Agent
from labd.runner.agents.offline import OfflineModelConfig
async def main(n):
    agent = Agent("bench", ["Answer."], config=OfflineModelConfig())
    start = time.perf_counter()
    for i in range(n):
        await agent.ask(f"turn {i}")
    print(time.perf_counter() - start)
asyncio.run(main(int(sys.argv[1])))
"""


def run_session(d: BenchDaemon, turns: int, tracked: bool) -> tuple[float, float, int, float, float]:
    with d.client(timeout=60) as c:
        sid = c.start("bench_flows:turns", params={"turns": turns, "tracked": tracked})
        final = c.wait(sid, timeout=900)
        if final["status"] != "completed":
            raise SystemExit(f"session {sid} ended {final['status']}: {final['reason']}")
        result = next(e for e in c.history(sid, kinds=["session.finished"]))["payload"]["result"]
        return (float(result["seconds"]), float(result["cpu_seconds"]), int(final["last_seq"]),
                float(result.get("main_cpu_seconds", 0.0)), float(result.get("other_cpu_seconds", 0.0)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=10_000, help="agent turns per run (default 10000)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating (default 2)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine()
    env = {"PYTHONPATH": f"{HERE}:{HERE.parent}"}
    times: dict[str, list[float]] = {"untracked": [], "tracked": [], "bare ag2": []}
    cpu: dict[str, list[float]] = {"untracked": [], "tracked": []}
    #: the runner's CPU split: the workflow's thread (agents + tracking + emit's encode and spool append)
    #: and its other threads (the channel thread sending to the daemon; ag2's worker threads, in both variants)
    main_cpu: dict[str, list[float]] = {"untracked": [], "tracked": []}
    other_cpu: dict[str, list[float]] = {"untracked": [], "tracked": []}
    events: dict[str, int] = {}
    with BenchDaemon(extra_env=env) as d:
        for r in range(args.rounds):
            for variant in ("untracked", "tracked"):
                secs, cpu_secs, n_events, main_secs, other_secs = run_session(d, args.turns, variant == "tracked")
                times[variant].append(secs)
                cpu[variant].append(cpu_secs)
                main_cpu[variant].append(main_secs)
                other_cpu[variant].append(other_secs)
                events[variant] = n_events
                print(f"round {r + 1}: {variant:<9} {secs:7.2f} s wall, {cpu_secs:7.2f} s CPU "
                      f"(workflow thread {main_secs:.2f} s, other threads {other_secs:.2f} s; "
                      f"{n_events:,} events stored)", flush=True)
            out = subprocess.run([sys.executable, "-c", BARE, str(args.turns)], capture_output=True, text=True,
                                 cwd=HERE.parent, check=True, env={**__import__("os").environ, **env})
            times["bare ag2"].append(float(out.stdout.strip()))
            print(f"round {r + 1}: bare ag2  {times['bare ag2'][-1]:7.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["untracked"]
    rows = [[k, f"{v:.2f} s", f"{v / args.turns * 1e6:.0f} us", f"{v / base:.3f}x", f"{events.get(k, 0):,}"]
            for k, v in med.items()]
    print()
    print_table(["variant", "median loop time", "per turn", "vs untracked", "events stored"], rows,
                title=f"{args.turns:,} agent turns, offline scripted model, median of {args.rounds}")
    overhead = (med["tracked"] / base - 1) * 100
    per_turn = (med["tracked"] - base) / args.turns * 1e6
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_overhead = (cpu_med["tracked"] / cpu_med["untracked"] - 1) * 100
    extra = (events["tracked"] - events["untracked"]) / args.turns
    print(f"\ntracking overhead, wall time: {overhead:+.1f} % ({per_turn:.0f} us per turn)")
    print(f"tracking overhead, runner CPU time: {cpu_overhead:+.1f} % "
          f"({cpu_med['untracked']:.2f} s -> {cpu_med['tracked']:.2f} s for {extra:.1f} extra events per turn)")
    # each round's tracked/untracked pair ran back to back: the median of the pairs' ratios follows the
    # box's load drift less than the ratio of the medians does
    paired = statistics.median(t / u for t, u in zip(cpu["tracked"], cpu["untracked"], strict=True))
    print(f"  paired per round (median of {args.rounds} ratios): {(paired - 1) * 100:+.1f} % runner CPU")
    main_med = {k: statistics.median(v) for k, v in main_cpu.items()}
    other_med = {k: statistics.median(v) for k, v in other_cpu.items()}
    per_event = 1e6 / max(1.0, extra * args.turns)
    print(f"  workflow thread: {main_med['untracked']:.2f} s -> {main_med['tracked']:.2f} s "
          f"({(main_med['tracked'] - main_med['untracked']) * per_event:.0f} us per tracking event: capture, "
          f"encode, spool)")
    print(f"  other threads:   {other_med['untracked']:.2f} s -> {other_med['tracked']:.2f} s "
          f"({(other_med['tracked'] - other_med['untracked']) * per_event:.0f} us per tracking event: the channel "
          f"thread sending; ag2's worker threads run in both variants)")
    verdict = {True: "MET", False: "NOT MET"}
    print(f"target <= 5 %: wall {verdict[overhead <= 5]}, CPU {verdict[cpu_overhead <= 5]}")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    try:
        sys.exit(main())
    finally:
        print(f"(total {time.perf_counter() - t0:.1f}s)")
