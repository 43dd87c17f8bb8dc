"""``cost.summary`` over a daemon's long history: months of LLM calls summed beside the request loop, each
grouping the same as summing every call."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import running_daemon

CALLS = 100_000
DAY = 86_400.0


def _expected(calls: list[dict[str, Any]], by: str, meta: dict[str, tuple[str, dict[str, str]]]) -> dict[str, Any]:
    """``cost.summary``'s groups as summing every call one by one gives them: {key: (calls, prompt, completion,
    cost, sessions)}."""
    groups: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, 0.0, set()])
    for call in calls:
        workflow, tags = meta[call["session_id"]]
        keys = {"model": [call["model"]], "workflow": [workflow], "session": [call["session_id"]],
                "day": [time.strftime("%Y-%m-%d", time.gmtime(call["ts"]))],
                "tag": [f"{k}={v}" for k, v in sorted(tags.items())] or ["(untagged)"]}[by]
        for key in keys:
            g = groups[key]
            g[0] += 1
            g[1] += call["prompt_tokens"]
            g[2] += call["completion_tokens"]
            g[3] += call["cost"]
            g[4].add(call["session_id"])
    return {k: (g[0], g[1], g[2], g[3], len(g[4])) for k, g in groups.items()}


@pytest.mark.timeout(240)
def test_months_of_calls_are_summed_beside_the_request_loop(isolated_env: Path) -> None:
    """A home whose store holds 100,000 LLM calls of three sessions over 60 days: ``cost.summary`` by model,
    workflow, tag, day and session gives what summing every call gives (calls, tokens, cost, sessions; ``since``
    too), and while it sums, other clients are answered (``daemon.status`` counts it among its ``long_reads``). It
    ran on the request loop: every client of the daemon waited for it (labd cost --all of months of use)."""
    home = isolated_env
    with running_daemon(home) as d, d.client() as c:
        sids = [c.start("demo.count", params={"n": 1, "delay": 0}, tags={"team": "red", "tier": "gpu"}),
                c.start("demo.count", params={"n": 1, "delay": 0}, tags={"team": "blue"}),
                c.start("demo.events", params={"n": 1})]
        for sid in sids:
            assert c.wait(sid, timeout=60)["status"] == "completed"
        meta = {sid: (s["workflow"], s["tags"]) for sid in sids for s in [c.session(sid)]}
    rng = random.Random(7)
    start = time.time() - 60 * DAY
    calls = [{"session_id": sids[i % 3], "seq": 1_000 + i, "ts": start + rng.random() * 60 * DAY, "node_id": None,
              "agent": "a", "model": rng.choice(["gpt-x", "claude-y", "labd-offline"]),
              "prompt_tokens": rng.randrange(1, 5000), "completion_tokens": rng.randrange(1, 800),
              "cost": rng.random() / 100, "offline": False} for i in range(CALLS)]
    engine = sa.create_engine(f"sqlite:///{home / 'labd.db'}")
    with engine.begin() as conn:  # the daemon is stopped: its store, as months of sessions left it
        table = sa.Table("cost_records", sa.MetaData(), autoload_with=conn)
        conn.execute(table.insert(), calls)
    engine.dispose()

    with running_daemon(home) as d, d.client(timeout=60) as c:
        done: dict[str, Any] = {}

        def summed() -> None:
            with d.client(timeout=120) as other:
                done["day"] = other.cost_summary(by="day")

        reader = threading.Thread(target=summed)
        seen = 0
        reader.start()
        while reader.is_alive():
            seen = max(seen, c.request("daemon.status")["long_reads"])
        reader.join()
        assert seen >= 1, "the sum never showed as a long read while it ran: other clients waited for it"
        replies = {by: c.cost_summary(by=by) for by in ("model", "workflow", "tag", "session")}
        replies["day"] = done["day"]
        since = start + 30 * DAY
        replies["since"] = c.cost_summary(by="model", since=since)

    for by, reply in replies.items():
        key, rows = ("model", [x for x in calls if x["ts"] >= since]) if by == "since" else (by, calls)
        expected = _expected(rows, key, meta)
        got = {g[key]: (g["calls"], g["prompt_tokens"], g["completion_tokens"], g["cost"], g["sessions"])
               for g in reply["groups"]}
        assert got.keys() == expected.keys(), by
        for k, (n, prompt, completion, cost, sessions) in expected.items():
            assert got[k][:3] == (n, prompt, completion) and got[k][4] == sessions, (by, k)
            assert got[k][3] == pytest.approx(cost, rel=1e-9), (by, k)
        assert reply["total"]["calls"] == len(rows) and reply["total"]["sessions"] == 3
