"""Workflows used only by the benchmarks (loaded by import path; the scripts put scripts/ on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def turns(ctx: Any, turns: int = 10_000, tracked: bool = True) -> dict[str, float]:
    """``turns`` agent turns against the offline scripted model, with labd's tracking (``ctx.agent``) or
    without it (a plain ``ag2.Agent`` with the same model). Returns the loop's own wall time."""
    from ag2 import Agent

    from labd.runner.agents.hooks import untracked
    from labd.runner.agents.offline import OfflineModelConfig

    async def body() -> tuple[float, float]:
        agent = ctx.agent("bench", "Answer.") if tracked else Agent("bench", ["Answer."], config=OfflineModelConfig())
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(turns):
            await agent.ask(f"turn {i}")
        return time.perf_counter() - start, time.process_time() - cpu

    if tracked:
        wall, cpu = asyncio.run(body())
    else:  # every agent of a session is tracked, however built: switch the capture off to measure it
        with untracked():
            wall, cpu = asyncio.run(body())
    # CPU seconds of the whole runner process (all threads: the channel thread's work is included)
    return {"seconds": wall, "cpu_seconds": cpu, "turns": float(turns)}
