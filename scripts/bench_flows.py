"""Workflows used only by the benchmarks (loaded by import path; the scripts put scripts/ on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def turns(ctx: Any, turns: int = 10_000, tracked: bool = True, profile: str = "") -> dict[str, float]:
    """``turns`` agent turns against the offline scripted model, with labd's tracking (``ctx.agent``) or
    without it (a plain ``ag2.Agent`` with the same model). Returns the loop's own wall time.
    ``profile``: a file to write the loop's cProfile statistics to (the workflow's thread only)."""
    import threading

    import psutil
    from ag2 import Agent

    from labd.runner.agents.hooks import untracked
    from labd.runner.agents.offline import OfflineModelConfig

    me = psutil.Process()
    main_tid = threading.get_native_id()

    def thread_cpu() -> tuple[float, float]:
        """(CPU seconds of the workflow's thread, of all the runner's other threads: the channel's, ag2's workers)."""
        main = other = 0.0
        for t in me.threads():
            if t.id == main_tid:
                main += t.user_time + t.system_time
            else:
                other += t.user_time + t.system_time
        return main, other

    split: list[tuple[float, float]] = []

    async def body() -> tuple[float, float]:
        agent = ctx.agent("bench", "Answer.") if tracked else Agent("bench", ["Answer."], config=OfflineModelConfig())
        split.append(thread_cpu())
        start, cpu = time.perf_counter(), time.process_time()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        for i in range(turns):
            await agent.ask(f"turn {i}")
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        split.append(thread_cpu())
        return time.perf_counter() - start, time.process_time() - cpu

    if tracked:
        wall, cpu = asyncio.run(body())
    else:  # every agent of a session is tracked, however built: switch the capture off to measure it
        with untracked():
            wall, cpu = asyncio.run(body())
    # CPU seconds of the whole runner process (all threads: the channel thread's work is included)
    return {"seconds": wall, "cpu_seconds": cpu, "turns": float(turns),
            "main_cpu_seconds": split[1][0] - split[0][0], "other_cpu_seconds": split[1][1] - split[0][1]}


def stepped_turns(ctx: Any, turns: int = 1000, per_step: int = 10, checkpoints: bool = True,
                  fail_at: int = 0) -> dict[str, float]:
    """The tracking benchmark's agent loop in steps of ``per_step`` turns, each step also writing a small
    file; ``checkpoints=False`` switches durable checkpoints off (to measure their cost). ``fail_at``: the
    step number that fails on its first run (a marker file beside the work directory remembers), for resume."""
    import os

    if not checkpoints:
        ctx.durable.enabled = False
    marker = ctx.workdir.parent / "bench-failed-once"

    async def body() -> tuple[float, float]:
        agent = ctx.agent("bench", "Answer.")
        start, cpu = time.perf_counter(), time.process_time()
        for s in range(max(1, turns // per_step)):
            with ctx.step(f"step {s + 1}") as node:
                if fail_at and s + 1 == fail_at and not marker.exists():
                    marker.write_text("1")
                    raise RuntimeError(f"step {fail_at} fails on its first run")
                for i in range(per_step):
                    await agent.ask(f"turn {s * per_step + i}")
                (ctx.workdir / f"out_{s % 50}.txt").write_text(f"step {s}\n" * 20)
                node.result = s
        return time.perf_counter() - start, time.process_time() - cpu

    wall, cpu = asyncio.run(body())
    return {"seconds": wall, "cpu_seconds": cpu, "pid": float(os.getpid())}
