"""``cost.summary`` over a long history: the sums the writer keeps per session, model and day (``cost_sums``)
against every call read and summed in Python, as it was before §49 (docs/benchmarks.md §49, §50).

A throwaway SQLite store with S sessions (tagged) and N LLM calls over 60 days, written as a store of the version
before ``cost_sums`` (revision 0011) and then migrated (the migration's time is printed: it sums the calls once);
for each grouping, and for ``since`` 30.5 days back (a day's part summed from its calls), ``Store.cost_summary``
(this tree) and the previous method (every call's row read with its session's workflow and tags, then summed one by
one), alternated for ROUNDS rounds, medians. The two results are checked equal (costs to 1e-9).

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

from labd.store.db import downgrade, migrate, open_engine  # noqa: E402
from labd.store.queries import Store  # noqa: E402
from labd.store.schema import cost_records, sessions  # noqa: E402

DAY = 86_400.0


def previous(engine: sa.Engine, by: str, since: float | None = None) -> dict[str, Any]:
    """The method before: one row per call, summed in Python."""
    c = cost_records.c
    q = (sa.select(c.session_id, c.ts, c.model, c.prompt_tokens, c.completion_tokens, c.cost, sessions.c.workflow,
                   sessions.c.tags).join(sessions, sessions.c.id == c.session_id))
    if since is not None:
        q = q.where(c.ts >= since)
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
        downgrade(engine, "0011_record_counts")  # a store of the version before cost_sums
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
        t = time.perf_counter()
        migrate(engine)
        print(f"{args.calls:,} calls of {args.sessions} sessions, SQLite, {args.rounds} rounds; "
              f"the migration summing them: {time.perf_counter() - t:.2f} s")
        store = Store(engine)
        since = now - 30.5 * DAY
        print(f"{'by':<10}{'kept sums (s)':>16}{'every call (s)':>16}{'ratio':>9}")
        for by in ("model", "workflow", "tag", "session", "day", "since"):
            now_t: list[float] = []
            before_t: list[float] = []
            for rnd in range(args.rounds):
                for which in (("now", "before") if rnd % 2 == 0 else ("before", "now")):
                    t = time.perf_counter()
                    if which == "now":
                        got = (store.cost_summary(by="model", since=since) if by == "since"
                               else store.cost_summary(by=by))
                        now_t.append(time.perf_counter() - t)
                    else:
                        want = previous(engine, "model", since) if by == "since" else previous(engine, by)
                        before_t.append(time.perf_counter() - t)
            key = "model" if by == "since" else by
            mine = {g[key]: (g["calls"], g["prompt_tokens"], g["completion_tokens"], g["cost"], g["sessions"])
                    for g in got["groups"]}
            assert mine.keys() == want.keys() and all(
                mine[k][:3] == want[k][:3] and mine[k][4] == want[k][4] and abs(mine[k][3] - want[k][3]) <= 1e-9 *
                max(1.0, want[k][3]) for k in want), by
            a, b = statistics.median(now_t), statistics.median(before_t)
            print(f"{by:<10}{a:>16.3f}{b:>16.3f}{a / b:>8.3f}x")
        engine.dispose()
        with_sums, without = writer_cost(tmp)
        print(f"the writer per LLM call (commits of 6): {with_sums:.1f} us with its sums kept, {without:.1f} us "
              f"without ({with_sums / without:.2f}x)")


def writer_cost(tmp: str, rounds: int = 10, commits: int = 500, per_commit: int = 6) -> tuple[float, float]:
    """The ingest thread's time per LLM call to insert it, (with its sums kept, without), in us: ``commits``
    transactions of ``per_commit`` calls of 4 sessions and one model, alternated for ``rounds``, medians."""
    from labd.store.writer import BatchWriter

    engine = open_engine(f"sqlite:///{tmp}/writer.db")
    migrate(engine)
    writer = BatchWriter(engine)
    seq = iter(range(1, 10**9))
    res: dict[bool, list[float]] = {True: [], False: []}
    for rnd in range(rounds):
        for sums in ((True, False) if rnd % 2 else (False, True)):
            t = time.perf_counter()
            for _ in range(commits):
                calls = [{"session_id": f"s{n % 4}", "seq": n, "ts": time.time(), "node_id": "n1", "agent": "a",
                          "model": "gpt-x", "prompt_tokens": 10, "completion_tokens": 5, "cost": 0.001,
                          "offline": False} for n in (next(seq) for _ in range(per_commit))]
                with engine.begin() as conn:
                    writer._insert(conn, "cost_records", calls)
                    if sums:
                        writer._add_cost_sums(conn, calls)
            res[sums].append((time.perf_counter() - t) / (commits * per_commit) * 1e6)
    writer.close()
    engine.dispose()
    return statistics.median(res[True]), statistics.median(res[False])


if __name__ == "__main__":
    main()
