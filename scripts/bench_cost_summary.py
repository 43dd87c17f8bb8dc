"""``cost.summary`` over a long history: the store's sums per session and model against every call read and summed
in Python, as it was before (docs/benchmarks.md §49).

A throwaway SQLite store with S sessions (tagged) and N LLM calls over 60 days; for each grouping,
``Store.cost_summary`` (this tree) and the previous method (every call's row read with its session's workflow and
tags, then summed one by one), alternated for ROUNDS rounds, medians. The two results are checked equal (costs to
1e-9).

Usage: ``python scripts/bench_cost_summary.py [--calls N] [--sessions S] [--rounds R]``. Prints figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labd.store.db import migrate, open_engine  # noqa: E402
from labd.store.queries import Store  # noqa: E402
from labd.store.schema import cost_records, sessions  # noqa: E402

DAY = 86_400.0


def previous(engine: sa.Engine, by: str) -> dict[str, Any]:
    """The method before: one row per call, summed in Python."""
    c = cost_records.c
    q = (sa.select(c.session_id, c.ts, c.model, c.prompt_tokens, c.completion_tokens, c.cost, sessions.c.workflow,
                   sessions.c.tags).join(sessions, sessions.c.id == c.session_id))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    groups: dict[str, list[Any]] = {}
    for sid, ts, model, prompt, completion, cost, workflow, tags in rows:
        if by == "model":
            keys = [model]
        elif by == "workflow":
            keys = [workflow]
        elif by == "session":
            keys = [sid]
        elif by == "day":
            keys = [time.strftime("%Y-%m-%d", time.gmtime(ts))]
        else:
            keys = [f"{k}={v}" for k, v in sorted(orjson.loads(tags or "{}").items())] or ["(untagged)"]
        for key in keys:
            g = groups.setdefault(key, [0, 0, 0, 0.0, set()])
            g[0] += 1
            g[1] += prompt
            g[2] += completion
            g[3] += cost
            g[4].add(sid)
    return {k: (g[0], g[1], g[2], g[3], len(g[4])) for k, g in groups.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(f"sqlite:///{tmp}/labd.db")
        migrate(engine)
        rng = random.Random(7)
        now = time.time()
        sids = [f"{i:012x}" for i in range(args.sessions)]
        with engine.begin() as conn:
            conn.execute(sessions.insert(), [
                {"id": sid, "name": f"s{i}", "workflow": f"flow{i % 5}", "status": "completed", "created_at": now,
                 "params": "{}", "limits": "{}", "workdir": tmp,
                 "tags": orjson.dumps({"team": f"t{i % 7}"}).decode() if i % 3 else "{}"}
                for i, sid in enumerate(sids)])
            for lo in range(0, args.calls, 100_000):
                conn.execute(cost_records.insert(), [
                    {"session_id": sids[i % len(sids)], "seq": i, "ts": now - rng.random() * 60 * DAY, "node_id": None,
                     "agent": "a", "model": rng.choice(["gpt-x", "claude-y", "labd-offline"]),
                     "prompt_tokens": rng.randrange(1, 5000), "completion_tokens": rng.randrange(1, 800),
                     "cost": rng.random() / 100, "offline": False} for i in range(lo, min(lo + 100_000, args.calls))])
        store = Store(engine)
        print(f"{args.calls:,} calls of {args.sessions} sessions, SQLite, {args.rounds} rounds")
        print(f"{'by':<10}{'store sums (s)':>16}{'every call (s)':>16}{'ratio':>9}")
        for by in ("model", "workflow", "tag", "session", "day"):
            now_t: list[float] = []
            before_t: list[float] = []
            for rnd in range(args.rounds):
                for which in (("now", "before") if rnd % 2 == 0 else ("before", "now")):
                    t = time.perf_counter()
                    if which == "now":
                        got = store.cost_summary(by=by)
                        now_t.append(time.perf_counter() - t)
                    else:
                        want = previous(engine, by)
                        before_t.append(time.perf_counter() - t)
            mine = {g[by]: (g["calls"], g["prompt_tokens"], g["completion_tokens"], g["cost"], g["sessions"])
                    for g in got["groups"]}
            assert mine.keys() == want.keys() and all(
                mine[k][:3] == want[k][:3] and mine[k][4] == want[k][4] and abs(mine[k][3] - want[k][3]) <= 1e-9 *
                max(1.0, want[k][3]) for k in want), by
            a, b = statistics.median(now_t), statistics.median(before_t)
            print(f"{by:<10}{a:>16.3f}{b:>16.3f}{a / b:>8.3f}x")
        engine.dispose()


if __name__ == "__main__":
    main()
