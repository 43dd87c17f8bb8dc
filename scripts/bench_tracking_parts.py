"""Where tracking's cost comes from: the same agent loop as ``bench_tracking.py``, in this one process, no daemon.

``bench_tracking.py`` measures the whole overhead in a real runner (tracker, ``Channel.emit``, the channel
thread, the spool, the daemon beside it). This script takes it apart. Each variant is compared with a plain
``ag2.Agent`` on the offline scripted model (tracking off), in ABBA pairs of short blocks in one process, so
that the box's drift falls out of each pair's ratio (the method of ``bench_tracking.py``):

- ``control``: plain against plain: the noise floor of the method (should be ~0 %);
- ``middleware``: a pass-through ag2 middleware (``on_turn``, ``on_llm_call``, ``on_tool_execution`` that only
  call on): what ag2's middleware layers cost, whatever they do;
- ``tracker``: the agent ``ctx.agent`` builds, with its events handed to a counter (labd's tracking code:
  middleware, recording client, serialisation, blobs; no event path);
- ``emit``: the same with the events handed to a real ``Channel.emit`` (encoding, spool append), its thread
  not started; between blocks (not timed) the backlog is taken and acknowledged as the channel thread and the
  daemon would (a real runner's events are acknowledged within ~100 ms; kept, they grow the heap). This is the
  event path's in-process share; the thread and the daemon are what ``bench_tracking.py`` adds on top.

Figures: the calling thread's CPU time per block; median of the per-pair ratios, IQR and a bootstrap 95 %
confidence interval of the median. Nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_common import bare_channel, print_machine, print_table  # noqa: E402
from bench_tracking import bootstrap_median, describe  # noqa: E402

VARIANTS = ("control", "middleware", "tracker", "emit")


def build(variant: str, workdir: Path) -> tuple[Any, bool, Callable[[], None]]:
    """(the agent of ``variant``, whether it runs tracked, what to do between blocks)."""
    from ag2 import Agent
    from ag2.middleware import BaseMiddleware

    from labd.runner.agents.factory import AgentFactory
    from labd.runner.agents.hooks import track_all_agents
    from labd.runner.agents.offline import OfflineModelConfig
    from labd.runner.files import FileTracker

    if variant == "control":
        return Agent("bench", ["Answer."], config=OfflineModelConfig()), False, _nothing
    if variant == "middleware":
        class PassThrough(BaseMiddleware):
            async def on_turn(self, call_next: Any, event: Any, context: Any) -> Any:
                return await call_next(event, context)

            async def on_llm_call(self, call_next: Any, events: Any, context: Any) -> Any:
                return await call_next(events, context)

            async def on_tool_execution(self, call_next: Any, event: Any, context: Any) -> Any:
                return await call_next(event, context)
        return Agent("bench", ["Answer."], config=OfflineModelConfig(), middleware=[PassThrough]), False, _nothing
    between = _nothing
    if variant == "emit":  # never started: emit encodes and spools, nothing is sent
        emit, between = bare_channel(workdir / "spool")
    else:
        seq = itertools.count(1)

        def emit(kind: str, payload: Any, node_id: str | None = None, parent: int | None = None) -> int:
            return next(seq)
    ids = itertools.count(1)
    factory = AgentFactory(emit=emit, new_node_id=lambda: f"n{next(ids)}", workdir=workdir, models={}, prices={},
                           secrets={}, approvals=None, files=FileTracker(workdir, emit))  # type: ignore[arg-type]
    track_all_agents(lambda: factory)
    return factory.agent("bench", "Answer."), True, between


def _nothing() -> None:
    return None


async def compare(variant: str, pairs: int, turns: int, warm: int) -> list[float]:
    """Per-pair ratios (variant / plain) of the calling thread's CPU time per block."""
    from ag2 import Agent

    from labd.runner.agents.hooks import untracked
    from labd.runner.agents.offline import OfflineModelConfig

    plain = Agent("bench", ["Answer."], config=OfflineModelConfig())
    other, tracked, between = build(variant, Path(tempfile.mkdtemp(prefix="labd-bench-")))
    counter = itertools.count()

    async def run(agent: Any, on: bool, n: int) -> float:
        start = time.thread_time()
        if on:
            for _ in range(n):
                await agent.ask(f"turn {next(counter)}")
        else:
            with untracked():
                for _ in range(n):
                    await agent.ask(f"turn {next(counter)}")
        return time.thread_time() - start

    await run(plain, False, warm)
    await run(other, tracked, warm)
    ratios = []
    for p in range(pairs):
        cpu = {}
        for which in ((0, 1) if p % 2 == 0 else (1, 0)):
            agent, on = (plain, False) if which == 0 else (other, tracked)
            await run(agent, on, 3)  # the variant's code warm again after the other's block
            cpu[which] = await run(agent, on, turns)
            between()
        ratios.append(cpu[1] / cpu[0])
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=150, help="ABBA block pairs per variant (default 150)")
    ap.add_argument("--turns", type=int, default=20, help="agent turns per block (default 20)")
    ap.add_argument("--warm", type=int, default=50, help="unmeasured turns of each side first (default 50)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = ap.parse_args()
    wanted = [v for v in args.variants.split(",") if v]
    unknown = set(wanted) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    print_machine()
    rows = []
    for variant in wanted:  # each in a fresh interpreter would be fairer still; the ABBA pairs carry the method
        t0 = time.perf_counter()
        ratios = asyncio.run(compare(variant, args.pairs, args.turns, args.warm))
        rows.append(describe(variant, ratios))
        lo, hi = bootstrap_median(ratios)
        print(f"{variant}: {(statistics.median(ratios) - 1) * 100:+.1f} % (CI {(lo - 1) * 100:+.1f} .. "
              f"{(hi - 1) * 100:+.1f} %), {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print_table(["variant vs plain ag2.Agent", "median of pair ratios", "IQR", "bootstrap 95 % CI of median",
                 "range"], rows,
                title=f"calling thread CPU, {args.pairs} ABBA pairs of {args.turns}-turn blocks, offline model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
