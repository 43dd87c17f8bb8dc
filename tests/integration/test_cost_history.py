"""``cost.summary`` over a daemon's long history: months of LLM calls, kept summed per session, model and day,
each grouping the same as summing every call."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from labd.store.db import downgrade
from labd.store.schema import model_key
from tests.conftest import running_daemon

CALLS = 100_000
DAY = 86_400.0


def _expected(calls: list[dict[str, Any]], by: str, meta: dict[str, tuple[str, dict[str, str]]]) -> dict[str, Any]:
    """``cost.summary``'s groups as summing every call one by one gives them: {key: (calls, prompt, completion,
    cost, sessions)}."""
    groups: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, 0.0, set()])
    for call in calls:
        workflow, tags = meta[call["session_id"]]
        keys = {"model": [model_key(call["model"])], "workflow": [workflow], "session": [call["session_id"]],
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


def _migrated_back(home: Path, revision: str) -> None:
    """Take the stopped daemon's store back to Alembic ``revision``: as a labd of that version left it."""
    engine = sa.create_engine(f"sqlite:///{home / 'labd.db'}")
    downgrade(engine, revision)
    engine.dispose()


@pytest.mark.timeout(240)
def test_months_of_calls_are_summed_from_the_kept_sums(isolated_env: Path) -> None:
    """A store of a labd before ``cost_sums`` (revision 0011) holding 100,000 LLM calls of three sessions over 60
    days is migrated (the calls summed per session, model and day), then a session makes calls through the writer:
    ``cost.summary`` by model, workflow, tag, day and session, and ``since`` (mid-day, and at midnight) give what
    summing every call one by one gives (calls, tokens, cost, sessions), and it runs on a read worker
    (``reads.long``). It summed every call on each request; before that, on the request loop."""
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
    since = start + 30.5 * DAY  # mid-day: that day's part is summed from the calls, the days after from the sums
    day_end = (since // DAY + 1) * DAY
    for i, model in enumerate(("L" * 300 + "a", "L" * 300 + "b", "L" * 300 + "a")):  # keyed cut, with a digest;
        calls[i]["model"] = model  # one name in since's day and after it: one group
        calls[i]["ts"] = (since + day_end) / 2 if i == 0 else day_end + 100 * i
    _migrated_back(home, "0011_record_counts")
    engine = sa.create_engine(f"sqlite:///{home / 'labd.db'}")
    with engine.begin() as conn:  # the daemon is stopped: its store, as months of sessions left it
        assert not sa.inspect(conn).has_table("cost_sums")
        table = sa.Table("cost_records", sa.MetaData(), autoload_with=conn)
        conn.execute(table.insert(), calls)
    engine.dispose()

    with running_daemon(home) as d, d.client(timeout=60) as c:
        live = c.start("planning_and_control", params={"max_steps": 2}, tags={"team": "red"})
        assert c.wait(live, timeout=90)["status"] == "completed"
        meta[live] = (c.session(live)["workflow"], {"team": "red"})
        made = [{**x, "session_id": live} for x in c.cost(live)["calls"]]
        assert made, "the live session made no LLM call"
        calls += made
        before = c.status()["counters"].get("reads.long", 0)
        replies = {by: c.cost_summary(by=by) for by in ("model", "workflow", "tag", "session", "day")}
        assert c.status()["counters"]["reads.long"] == before + 5  # each on a read worker, not the loop
        midnight = (int(start // DAY) + 20) * DAY
        replies["since"] = c.cost_summary(by="model", since=since)
        replies["midnight"] = c.cost_summary(by="day", since=midnight)

    for by, reply in replies.items():
        key, rows = {"since": ("model", [x for x in calls if x["ts"] >= since]),
                     "midnight": ("day", [x for x in calls if x["ts"] >= midnight])}.get(by, (by, calls))
        expected = _expected(rows, key, meta)
        got = {g[key]: (g["calls"], g["prompt_tokens"], g["completion_tokens"], g["cost"], g["sessions"])
               for g in reply["groups"]}
        assert got.keys() == expected.keys(), by
        for k, (n, prompt, completion, cost, sessions) in expected.items():
            assert got[k][:3] == (n, prompt, completion) and got[k][4] == sessions, (by, k)
            assert got[k][3] == pytest.approx(cost, rel=1e-9), (by, k)
        assert reply["total"]["calls"] == len(rows) and reply["total"]["sessions"] == 4
