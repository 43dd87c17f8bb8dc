"""Tracking overhead: the same scripted agent loop with and without labd's automatic capture, A/B in one run.

Each labd session (``--sessions``, one after the other, each on a fresh real daemon) runs the workflow
``bench_tracking_flows:ab_turns``: ``--pairs`` pairs of blocks of ``--turns`` agent turns on the offline
scripted model, one block **tracked** (the agent built by ``ctx.agent``: every turn records
agent.turn.started/finished, llm.request/response, agent.message and cost.recorded, which go through the
runner's channel thread to the daemon and are persisted) and one **untracked** (a plain ``ag2.Agent`` inside
``hooks.untracked()``), in ABBA order (AB, BA, AB, ...), after a warm-up of both and with a few unmeasured
turns before each block. Blocks are short and neighbours run moments apart in the same process, so the box's
load drift and the process-to-process variance (memory layout) fall mostly out of each pair's ratio.

Figures, all from the runner process: its CPU time per block (all threads, counted until ``--settle``
seconds after the block's last turn, so that the channel thread's sending of the block's batched events is
in it), split into the workflow's thread and the other threads (the channel thread; ag2's worker threads run
in both variants), and by thread name; and the loop's wall time. The overhead is the median of the per-pair
tracked/untracked ratios, with its interquartile range and a bootstrap 95 % confidence interval of that
median; the ratio of the summed CPU over all blocks is printed beside it. Target (issue 7): <= 5 % runner CPU.

With ``--baseline DIR`` (another labd tree, e.g. ``git archive`` of an older commit with ``labd/{daemon,runner,
ipc,store,frontends}`` symlinked to its folders), each session of this tree is followed by one on a daemon (and
runners) importing labd from DIR, so both trees' overheads are measured on the same box in the same minutes; the
detailed tables are this tree's, and a last table compares the two.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import bench_common  # noqa: E402
from bench_common import BenchDaemon, interrupt_on_sigterm, print_machine, print_table  # noqa: E402

#: variant -> thread name -> CPU seconds, summed over all blocks of all sessions
THREADS: dict[str, dict[str, float]] = {}
#: the channel thread's CPU seconds by loop phase (the phase that ends there: drained, taken, flushed, ...)
PHASES: dict[str, float] = {}
EVENTS_PER_TURN = 6  # agent.turn.started/finished, llm.request/response, agent.message, cost.recorded


def run_session(d: BenchDaemon, args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """The blocks one session measured, and the number of events it stored."""
    with d.client(timeout=60) as c:
        sid = c.start("bench_tracking_flows:ab_turns",
                      params={"turns": args.turns, "pairs": args.pairs, "warm": args.warm, "settle": args.settle,
                              "block_warm": args.block_warm})
        final = c.wait(sid, timeout=1800)
        if final["status"] != "completed":
            raise SystemExit(f"session {sid} ended {final['status']}: {final['reason']}")
        result = next(e for e in c.history(sid, kinds=["session.finished"]))["payload"]["result"]
        for phase, secs in (result.get("phases") or {}).items():
            PHASES[phase] = PHASES.get(phase, 0.0) + secs
        PHASES["passes"] = PHASES.get("passes", 0) + int(result.get("passes") or 0)
        for variant, per in (result.get("threads") or {}).items():
            for name, secs in per.items():
                THREADS.setdefault(variant, {})[name] = THREADS.get(variant, {}).get(name, 0.0) + secs
        return list(result["blocks"]), int(final["last_seq"])


def bootstrap_median(values: Sequence[float], n: int = 4000, seed: int = 7) -> tuple[float, float]:
    """95 % bootstrap confidence interval of the median of ``values`` (percentile method)."""
    rnd = random.Random(seed)
    k = len(values)
    meds = sorted(statistics.median(rnd.choices(values, k=k)) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


def describe(name: str, ratios: Sequence[float]) -> list[str]:
    """A table row: median of the paired ratios, IQR, bootstrap CI, range."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    lo, hi = bootstrap_median(ratios)
    return [name, pct(statistics.median(ratios)), f"{pct(q[0])} .. {pct(q[2])}", f"{pct(lo)} .. {pct(hi)}",
            f"{pct(min(ratios))} .. {pct(max(ratios))}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=100, help="agent turns per block (default 100)")
    ap.add_argument("--pairs", type=int, default=20, help="tracked/untracked block pairs per session (default 20)")
    ap.add_argument("--sessions", type=int, default=3, help="sessions, one after the other (default 3)")
    ap.add_argument("--warm", type=int, default=40, help="unmeasured warm-up turns of each variant (default 40)")
    ap.add_argument("--block-warm", type=int, default=5,
                    help="unmeasured turns before each block, of its variant (default 5; the switch is not measured)")
    ap.add_argument("--settle", type=float, default=0.2,
                    help="seconds after each block still counted with it (its batched events leave; default 0.2)")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also run each session on a labd tree importable from DIR, alternated (A/B)")
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "labd").is_dir():
        ap.error(f"{args.baseline} has no labd package")
    interrupt_on_sigterm()
    print_machine()
    blocks: list[dict[str, Any]] = []
    base_ratios: list[float] = []
    stored = []
    for s in range(args.sessions):
        with BenchDaemon(extra_env={"PYTHONPATH": f"{HERE}:{HERE.parent}"}) as d:
            got, n_events = run_session(d, args)
        for b in got:
            b["session"] = s
        blocks += got
        stored.append(n_events)
        by = {(b["pair"], b["variant"]): b for b in got}
        for p in range(args.pairs):
            t, u = by[(p, "tracked")], by[(p, "untracked")]
            print(f"session {s + 1} pair {p + 1:>2} ({'AB' if p % 2 == 0 else 'BA'}): CPU untracked "
                  f"{u['cpu']:.3f} s, tracked {t['cpu']:.3f} s ({pct(t['cpu'] / u['cpu'])}); workflow thread "
                  f"{pct(t['main_cpu'] / u['main_cpu'])}; wall {pct(t['wall'] / u['wall'])}", flush=True)
        if args.baseline is not None:
            base_ratios += baseline_session(args)
            print(f"session {s + 1} on the baseline: median pair {pct(statistics.median(base_ratios))} so far",
                  flush=True)
    pairs: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for b in blocks:
        pairs.setdefault((b["session"], b["pair"]), {})[b["variant"]] = b
    ratio: dict[str, list[float]] = {"cpu": [], "main_cpu": [], "wall": []}
    for pair in pairs.values():
        for key in ratio:
            ratio[key].append(pair["tracked"][key] / pair["untracked"][key])
    tot = {v: {k: sum(b[k] for b in blocks if b["variant"] == v) for k in ("cpu", "main_cpu", "other_cpu", "wall")}
           for v in ("untracked", "tracked")}
    turns = {v: sum(b["turns"] for b in blocks if b["variant"] == v) for v in ("untracked", "tracked")}
    n_pairs = len(pairs)
    print()
    print_table(["runner figure (tracked / untracked)", "median of pair ratios", "IQR", "bootstrap 95 % CI of median",
                 "range"],
                [describe("CPU, all threads (until settle)", ratio["cpu"]),
                 describe("CPU, workflow thread", ratio["main_cpu"]),
                 describe("loop wall time", ratio["wall"])],
                title=f"{n_pairs} pairs of {args.turns}-turn blocks ({args.sessions} sessions x {args.pairs}), "
                      f"offline scripted model, ABBA order")
    per_turn = {v: {k: tot[v][k] / turns[v] * 1e6 for k in tot[v]} for v in tot}
    rows = [[v, f"{per_turn[v]['cpu']:.0f} us", f"{per_turn[v]['main_cpu']:.0f} us",
             f"{per_turn[v]['other_cpu']:.0f} us", f"{per_turn[v]['wall']:.0f} us"] for v in ("untracked", "tracked")]
    print_table(["variant", "CPU per turn", "workflow thread", "other threads", "loop wall"], rows,
                title="summed over all blocks, per turn")
    per_thread = {v: {n: secs / turns[v] * 1e6 for n, secs in THREADS.get(v, {}).items()}
                  for v in ("untracked", "tracked")}  # us per turn
    tracked_t, untracked_t = per_thread["tracked"], per_thread["untracked"]
    names = sorted(set(tracked_t) | set(untracked_t), key=lambda n: -tracked_t.get(n, 0.0))
    print_table(["thread", "untracked", "tracked", "difference per tracking event"],
                [[n, f"{untracked_t.get(n, 0.0):.0f} us", f"{tracked_t.get(n, 0.0):.0f} us",
                  f"{(tracked_t.get(n, 0.0) - untracked_t.get(n, 0.0)) / EVENTS_PER_TURN:.1f} us"] for n in names],
                title="CPU per turn by thread (/proc, 10 ms ticks; summed over all blocks)")
    rows = []
    for key, label, scale, unit in (("main_sys", "kernel CPU", 1e6, "us"), ("main_minflt", "minor page faults", 1, ""),
                                    ("main_nvcsw", "voluntary switches", 1, ""),
                                    ("main_nivcsw", "involuntary switches", 1, ""),
                                    ("gc0", "GC gen 0 CPU", 1e6, "us"), ("gc1", "GC gen 1 CPU", 1e6, "us"),
                                    ("gc2", "GC gen 2 CPU", 1e6, "us"), ("gcn0", "GC gen 0 collections", 1, ""),
                                    ("gcn2", "GC gen 2 collections", 1, ""),
                                    ("loops", "channel loop passes", 1, ""), ("sends", "channel sends", 1, ""),
                                    ("chan_cpu", "channel thread CPU (exact)", 1e6, "us")):
        per = [sum(b.get(key, 0) for b in blocks if b["variant"] == v) / turns[v] * scale
               for v in ("untracked", "tracked")]
        rows.append([label, f"{per[0]:.2f} {unit}".strip(), f"{per[1]:.2f} {unit}".strip()])
    print_table(["workflow thread, per turn", "untracked", "tracked"], rows,
                title="getrusage(RUSAGE_THREAD); GC (gc.callbacks); the channel thread's loop passes and sends")
    passes = PHASES.pop("passes", 0)  # the whole session's loop passes, like the phase sums
    if PHASES and passes:
        print_table(["phase (ends at)", "CPU per loop pass", "share"],
                    [[k, f"{v / passes * 1e6:.1f} us", f"{v / sum(PHASES.values()) * 100:.0f} %"]
                     for k, v in PHASES.items()],
                    title=f"channel thread CPU by loop phase (whole sessions, {passes:,} passes)")
    events = EVENTS_PER_TURN
    d_main = per_turn["tracked"]["main_cpu"] - per_turn["untracked"]["main_cpu"]
    d_other = per_turn["tracked"]["other_cpu"] - per_turn["untracked"]["other_cpu"]
    summed = tot["tracked"]["cpu"] / turns["tracked"] / (tot["untracked"]["cpu"] / turns["untracked"])
    print(f"\nper tracking event ({events} per turn): workflow thread {d_main / events:.1f} us, other threads "
          f"(channel) {d_other / events:.1f} us")
    print(f"events stored per session: {', '.join(f'{n:,}' for n in stored)} (expected >= "
          f"{(args.warm + args.pairs * (args.turns + args.block_warm)) * events:,} tracking events each)")
    med = statistics.median(ratio["cpu"])
    lo, hi = bootstrap_median(ratio["cpu"])
    print(f"tracking overhead, runner CPU: {pct(med)} (median of {n_pairs} pairs; 95 % CI {pct(lo)} .. {pct(hi)}); "
          f"summed over all blocks {pct(summed)}")
    verdict = "MET" if med <= 1.05 else "NOT MET"
    sure = " (the CI's upper end is below 5 % too)" if hi <= 1.05 else (
        " (the CI's lower end is above 5 %)" if lo > 1.05 else " (the CI contains 5 %)")
    print(f"target <= 5 %: {verdict}{sure}")
    if base_ratios:
        print_table(["tree", "median of pair ratios", "IQR", "bootstrap 95 % CI of median", "range"],
                    [describe("this tree", ratio["cpu"]), describe(f"baseline {args.baseline}", base_ratios)],
                    title="tracking overhead, runner CPU, both trees (sessions alternated)")
    return 0


def baseline_session(args: argparse.Namespace) -> list[float]:
    """One session on a daemon importing labd from ``--baseline``: its pairs' tracked/untracked CPU ratios. The
    per-thread and per-phase sums stay this tree's."""
    saved = copy.deepcopy(THREADS), dict(PHASES)
    repo = bench_common.REPO
    bench_common.REPO = args.baseline.resolve()  # the daemon's PYTHONPATH starts with it (then this scripts dir)
    try:
        with BenchDaemon(extra_env={"PYTHONPATH": str(HERE)}) as d:
            got, _ = run_session(d, args)
    finally:
        bench_common.REPO = repo
        THREADS.clear()
        THREADS.update(saved[0])
        PHASES.clear()
        PHASES.update(saved[1])
    by = {(b["pair"], b["variant"]): b for b in got}
    return [by[(p, "tracked")]["cpu"] / by[(p, "untracked")]["cpu"] for p in range(args.pairs)]


if __name__ == "__main__":
    t0 = time.perf_counter()
    try:
        sys.exit(main())
    finally:
        print(f"(total {time.perf_counter() - t0:.1f}s)")
