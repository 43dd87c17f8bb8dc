"""The workflow of ``bench_tracking.py`` (loaded by import path; the script puts scripts/ on PYTHONPATH).

One labd session alternates blocks of agent turns with labd's tracking on and off, in ABBA order, so that
each tracked block has an untracked neighbour run moments apart in the same process (the box's load drifts
over seconds; a runner process's memory layout differs from the next one's). Both variants drive the same
offline scripted model; the tracked agent is built by ``ctx.agent`` and its events go the real way (channel
thread -> daemon -> store), the untracked one is a plain ``ag2.Agent`` run inside ``hooks.untracked()``.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from typing import Any


def ab_turns(ctx: Any, turns: int = 100, pairs: int = 20, warm: int = 40, settle: float = 0.2,
             block_warm: int = 5) -> dict[str, Any]:
    """``pairs`` pairs of blocks of ``turns`` agent turns (tracked and untracked; AB, then BA, ...).

    For each block it returns the loop's wall time and the runner's CPU time from the block's start to
    ``settle`` seconds after its last turn (so the channel thread's sending of the block's bulk events,
    which may wait up to 100 ms for company, is counted with the block that emitted them), split into the
    workflow's thread and the process's other threads (the channel thread; ag2's worker threads run in
    both variants). ``warm`` turns of each variant run first, unmeasured, and ``block_warm`` turns before each
    block (a variant's code and data are cold again after the other variant's block and the pause: without
    these the switch itself would be measured, and the tracked variant has more code to bring back)."""
    from ag2 import Agent

    from labd.runner.agents.hooks import untracked
    from labd.runner.agents.offline import OfflineModelConfig

    def snap() -> tuple[float, float]:
        """(process CPU, the workflow thread's CPU), seconds (clock_gettime: exact, where /proc's per-thread
        times tick in 10 ms); the other threads' CPU is the difference."""
        return time.process_time(), time.thread_time()

    def by_thread() -> dict[str, float]:
        """CPU seconds of each thread of the runner, by name (Python's thread name, else the OS one: ZeroMQ's
        I/O thread), summed per name. /proc ticks in 10 ms: for sums over many blocks only."""
        import psutil

        names = {t.native_id: t.name for t in threading.enumerate()}
        names[threading.get_native_id()] = "workflow"
        out: dict[str, float] = {}
        for t in psutil.Process().threads():
            name = names.get(t.id)
            if name is None:
                try:
                    with open(f"/proc/self/task/{t.id}/comm") as f:
                        name = f.read().strip()
                except OSError:
                    name = "?"
            name = name.split("_")[0] if name.startswith("AnyIO") else name
            out[name] = out.get(name, 0.0) + t.user_time + t.system_time
        return out

    threads: dict[str, dict[str, float]] = {"tracked": {}, "untracked": {}}
    import gc

    gc_time = [0.0, 0.0, 0.0]  # thread CPU seconds spent in collections, per generation (workflow thread)
    gc_count = [0, 0, 0]
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.thread_time()
        else:
            gen = info["generation"]
            gc_time[gen] += time.thread_time() - gc_start[0]
            gc_count[gen] += 1

    gc.callbacks.append(on_gc)
    channel = _find_channel()
    loops = [0]
    phases: dict[str, float] = {}  # channel thread CPU seconds by loop phase (ended there), all blocks
    if channel is not None:
        last = [0.0]

        def hook(phase: str) -> None:
            """On the channel thread: count loop passes and its CPU by the phase that ends here."""
            now = time.thread_time()
            if phase == "top":
                loops[0] += 1
            elif last[0]:
                phases[phase] = phases.get(phase, 0.0) + now - last[0]
            last[0] = now
        channel.phase_hook = hook

    chan_clock = None  # the channel thread's own CPU clock: exact, where /proc's per-thread times tick in 10 ms
    if channel is not None and channel._thread.ident is not None:  # noqa: SLF001 - a benchmark's probe
        chan_clock = time.pthread_getcpuclockid(channel._thread.ident)  # noqa: SLF001

    def counters() -> tuple[float, ...]:
        sends = channel.sends if channel is not None else 0
        chan = time.clock_gettime(chan_clock) if chan_clock is not None else 0.0
        return (*gc_time, *gc_count, loops[0], sends, chan)

    async def body() -> list[dict[str, Any]]:
        tracked = ctx.agent("bench", "Answer.")
        plain = Agent("bench", ["Answer."], config=OfflineModelConfig())
        counter = 0

        async def run(variant: str, n: int) -> float:
            nonlocal counter
            agent = tracked if variant == "tracked" else plain
            start = time.perf_counter()
            if variant == "tracked":
                for _ in range(n):
                    counter += 1
                    await agent.ask(f"turn {counter}")
            else:
                with untracked():
                    for _ in range(n):
                        counter += 1
                        await agent.ask(f"turn {counter}")
            return time.perf_counter() - start

        await run("untracked", warm)
        await run("tracked", warm)
        await asyncio.sleep(settle)
        blocks: list[dict[str, Any]] = []
        for p in range(pairs):
            order = ("untracked", "tracked") if p % 2 == 0 else ("tracked", "untracked")
            for variant in order:
                await run(variant, block_warm)
                per0 = by_thread()
                ru0 = resource.getrusage(resource.RUSAGE_THREAD)
                k0 = counters()
                cpu0, main0 = snap()
                wall = await run(variant, turns)
                await asyncio.sleep(settle)  # the channel thread sends this block's tail now, counted with it
                cpu1, main1 = snap()
                ru1 = resource.getrusage(resource.RUSAGE_THREAD)
                per1 = by_thread()
                k = [b - a for a, b in zip(k0, counters(), strict=True)]
                acc = threads[variant]
                for name, secs in per1.items():
                    acc[name] = acc.get(name, 0.0) + secs - per0.get(name, 0.0)
                blocks.append({"pair": p, "variant": variant, "turns": turns, "wall": wall, "cpu": cpu1 - cpu0,
                               "main_cpu": main1 - main0, "other_cpu": (cpu1 - cpu0) - (main1 - main0),
                               # the workflow thread's kernel time, page faults and context switches
                               "main_sys": ru1.ru_stime - ru0.ru_stime, "main_minflt": ru1.ru_minflt - ru0.ru_minflt,
                               "main_nvcsw": ru1.ru_nvcsw - ru0.ru_nvcsw, "main_nivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
                               # garbage collection (CPU s, count, per generation), channel loop passes, sends
                               "gc0": k[0], "gc1": k[1], "gc2": k[2], "gcn0": k[3], "gcn1": k[4], "gcn2": k[5],
                               "loops": k[6], "sends": k[7], "chan_cpu": k[8]})
        return blocks

    try:
        return {"blocks": asyncio.run(body()), "warm": warm, "threads": threads, "phases": phases,
                "passes": loops[0]}
    finally:
        gc.callbacks.remove(on_gc)
        if channel is not None:
            channel.phase_hook = None


def _find_channel() -> Any:
    """This runner's event channel (the benchmark counts its loop passes and sends; a workflow has no handle)."""
    import gc

    from labd.runner.channel import Channel

    return next((o for o in gc.get_objects() if isinstance(o, Channel)), None)
