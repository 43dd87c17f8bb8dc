"""Durable steps: what checkpoints cost, and how fast a resume continues. One run, side by side:

1. **overhead**: the tracking benchmark's agent loop (offline model) in steps, each writing a file, with
   durable checkpoints on and off (alternating, ``--rounds`` times, medians). Target: <= 5 % wall time.
2. **snapshot**: in process, a work directory of ``--files`` files / ``--mb`` MB; after a first checkpoint one
   file changes; the time of the next checkpoint (after the file tracker's scan, which the runner does after
   every step anyway) and the new storage it took, beside a ``cp -r`` and a ``tar`` of the same directory.
   Targets: <= 50 ms, <= the changed file's size of new storage.
3. **resume**: a session of ``--steps`` steps whose last step fails once; ``resume`` is timed to the first
   event of the new runner and to the first step it runs (the last one). Target: first new event <= 1 s.

Keep runs short on a shared machine (the defaults take about a minute).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import BenchDaemon, interrupt_on_sigterm, print_machine, print_table  # noqa: E402


def overhead(rounds: int, turns: int, per_step: int) -> None:
    env = {"PYTHONPATH": f"{HERE}:{HERE.parent}"}
    walls: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    costs: list[float] = []
    with BenchDaemon(extra_env=env) as d, d.client(timeout=60) as c:
        for _ in range(rounds):
            for on in (False, True):
                sid = c.start("bench_flows:stepped_turns", params={"turns": turns, "per_step": per_step,
                                                                  "checkpoints": on})
                final = c.wait(sid, timeout=600)
                if final["status"] != "completed":
                    raise SystemExit(f"session {sid} ended {final['status']}: {final['reason']}")
                result = next(e for e in c.history(sid, kinds=["session.finished"]))["payload"]["result"]
                walls[on].append(float(result["seconds"]))
                cpus[on].append(float(result["cpu_seconds"]))
                if on:  # what each checkpoint itself took, measured in the runner (steadier than wall time)
                    costs.extend(e["payload"]["duration"] for e in c.history(sid, kinds=["step.checkpoint"]))
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    steps = max(1, turns // per_step)
    print_table(["variant", "wall, rounds (s)", "median wall", "per step", "median runner CPU"],
                [["checkpoints off", " ".join(f"{w:.2f}" for w in walls[False]), f"{off:.2f} s",
                  f"{off / steps * 1000:.1f} ms", f"{statistics.median(cpus[False]):.2f} s"],
                 ["checkpoints on", " ".join(f"{w:.2f}" for w in walls[True]), f"{on:.2f} s",
                  f"{on / steps * 1000:.1f} ms", f"{statistics.median(cpus[True]):.2f} s"]],
                title=f"1. checkpoint overhead: {turns} agent turns in {steps} steps of {per_step}")
    pct = (on / off - 1) * 100
    own = statistics.median(costs)
    cpu_pct = (statistics.median(cpus[True]) / statistics.median(cpus[False]) - 1) * 100
    print(f"runner CPU time with checkpoints: {cpu_pct:+.1f} %")
    print(f"checkpoint overhead: {pct:+.1f} % wall ({(on - off) / steps * 1000:+.2f} ms per step); "
          f"target <= 5 %: {'MET' if pct <= 5 else 'NOT MET'}")
    print(f"each checkpoint itself (runner-side, median of {len(costs)}): {own * 1000:.2f} ms = "
          f"{own / (off / steps) * 100:.2f} % of a step without checkpoints\n")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def snapshot(files: int, mb: int) -> None:
    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker

    tmp = Path(tempfile.mkdtemp(prefix="labdd-", dir=os.environ.get("TMPDIR", "/tmp")))
    try:
        work = tmp / "s" / "work"
        work.mkdir(parents=True)
        size = mb * 2**20 // files
        for i in range(files):
            sub = work / f"d{i % 20}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.bin").write_bytes(os.urandom(size))
        events: list[tuple[str, dict]] = []
        tracker = FileTracker(work, lambda *a, **k: 0)
        durable = Durable(lambda kind, payload, node=None: events.append((kind, payload)) or 0, tmp / "s", work,
                          tracker)
        t0 = time.perf_counter()
        tracker.scan("n1")
        t1 = time.perf_counter()
        durable.checkpoint("n1", "0", "first", None)
        t2 = time.perf_counter()
        objects = tmp / "s" / "checkpoints" / "objects"
        first_bytes = _du(objects)
        changed = work / "d7" / "f7.bin"
        changed.write_bytes(os.urandom(size))
        t3 = time.perf_counter()
        tracker.scan("n2")
        t4 = time.perf_counter()
        durable.checkpoint("n2", "1", "second", {"changed": 1})
        t5 = time.perf_counter()
        new_bytes = _du(objects) - first_bytes
        t6 = time.perf_counter()
        subprocess.run(["cp", "-r", str(work), str(tmp / "copy")], check=True)
        t7 = time.perf_counter()
        subprocess.run(["tar", "-cf", str(tmp / "work.tar"), "-C", str(work), "."], check=True)
        t8 = time.perf_counter()
        cp_bytes, tar_bytes = _du(tmp / "copy"), (tmp / "work.tar").stat().st_size
        ck = t5 - t4
        print_table(["operation", "time", "new storage", "vs checkpoint"],
                    [["first checkpoint (all files new)", f"{(t2 - t1) * 1000:.0f} ms",
                      f"{first_bytes / 2**20:.1f} MiB", f"{(t2 - t1) / ck:.0f}x"],
                     ["scan after 1 file changed (runs anyway)", f"{(t4 - t3) * 1000:.1f} ms", "-", "-"],
                     ["**checkpoint, 1 file changed**", f"{ck * 1000:.1f} ms", f"{new_bytes / 2**10:.0f} KiB", "1x"],
                     ["cp -r of the directory", f"{(t7 - t6) * 1000:.0f} ms", f"{cp_bytes / 2**20:.1f} MiB",
                      f"{(t7 - t6) / ck:.0f}x"],
                     ["tar of the directory", f"{(t8 - t7) * 1000:.0f} ms", f"{tar_bytes / 2**20:.1f} MiB",
                      f"{(t8 - t7) / ck:.0f}x"]],
                    title=f"2. snapshot: {files} files, {mb} MB, 1 file ({size / 2**10:.0f} KiB) changed "
                          f"(first scan {(t1 - t0) * 1000:.0f} ms)")
        content = events[-1][1]["new_bytes"]
        print(f"checkpoint with 1 file changed: {ck * 1000:.1f} ms (target <= 50 ms: "
              f"{'MET' if ck <= 0.05 else 'NOT MET'}); new storage {new_bytes} B for a {size} B file: "
              f"{content} B of file content (target <= the file's size: {'MET' if content <= size else 'NOT MET'}) "
              f"+ {new_bytes - content} B of manifest changes and step result\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resume(steps: int) -> None:
    env = {"PYTHONPATH": f"{HERE}:{HERE.parent}"}
    with BenchDaemon(extra_env=env) as d, d.client(timeout=60) as c:
        sid = c.start("bench_flows:stepped_turns", params={"turns": steps, "per_step": 1, "fail_at": steps})
        final = c.wait(sid, timeout=600)
        if final["status"] != "failed":
            raise SystemExit(f"expected a failure at step {steps}: {final['status']} {final['reason']}")
        last = final["last_seq"]
        t0 = time.time()
        c.resume(sid)
        t1 = time.time()
        first_runner = first_step = None
        deadline = time.monotonic() + 120
        while first_step is None and time.monotonic() < deadline:
            for e in c.events(sid, since=last)["events"]:
                if e["src"] == "runner" and first_runner is None:
                    first_runner = e["ts"]
                if e["kind"] == "step.started" and first_step is None:
                    first_step = e["ts"]
            time.sleep(0.005)
        final = c.wait(sid, timeout=600)
        reqs = len(c.events(sid, since=last, kinds=["llm.request"])["events"])
    assert first_runner is not None and first_step is not None
    print_table(["from the resume request to", "time"],
                [["its reply (continuation committed, runner forked)", f"{(t1 - t0) * 1000:.0f} ms"],
                 ["**first event of the new runner**", f"{(first_runner - t0) * 1000:.0f} ms"],
                 [f"first step it runs (step {steps}, after skipping {steps - 1})",
                  f"{(first_step - t0) * 1000:.0f} ms"]],
                title=f"3. resume of a {steps}-step session failed at its last step ({final['status']}, "
                      f"{reqs} new LLM request(s))")
    print(f"first new event {first_runner - t0:.3f} s after the request (target <= 1 s: "
          f"{'MET' if first_runner - t0 <= 1 else 'NOT MET'})\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["overhead", "snapshot", "resume"], help="run one part")
    ap.add_argument("--rounds", type=int, default=3, help="overhead: runs of each variant (default 3)")
    ap.add_argument("--turns", type=int, default=500, help="overhead: agent turns per run (default 500)")
    ap.add_argument("--per-step", type=int, default=10, help="overhead: turns per step (default 10)")
    ap.add_argument("--files", type=int, default=1000, help="snapshot: files (default 1000)")
    ap.add_argument("--mb", type=int, default=200, help="snapshot: MB in all (default 200)")
    ap.add_argument("--steps", type=int, default=50, help="resume: steps of the session (default 50)")
    args = ap.parse_args()
    interrupt_on_sigterm()
    print_machine()
    if args.only in (None, "snapshot"):
        snapshot(args.files, args.mb)
    if args.only in (None, "resume"):
        resume(args.steps)
    if args.only in (None, "overhead"):
        overhead(args.rounds, args.turns, args.per_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
