"""Queries over the record: roll-ups per node, event filters, tags and session filters, cost across sessions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labd.ipc.client import LabdError


@pytest.fixture
def shared_client(shared_daemon) -> Iterator[Any]:
    """A client of the module's shared daemon, for tests that read only their own sessions (tests that list or
    sum over all sessions use ``client``, a fresh daemon of their own)."""
    with shared_daemon.client() as c:
        yield c


def test_rollups_equal_the_sum_of_their_calls(shared_client) -> None:
    """Every DAG node carries the tokens and cost of its own calls plus those of every node nested in it:
    each step, attempt and phase total equals the sum of the cost.recorded events inside it, and the
    phases add up to the session total (in dag, show and cost replies alike)."""
    client = shared_client
    sid = client.start("planning_and_control", params={"task": "Go.\n- compute FAIL_ONCE values\n- two",
                                                       "max_steps": 2})
    assert client.wait(sid, timeout=90)["status"] == "completed"
    nodes = client.dag(sid)["dag"]["nodes"]
    children: dict[str, list[str]] = {}
    for n in nodes:
        children.setdefault(n["parent_node"], []).append(n["node_id"])

    def subtree(nid: str) -> set[str]:
        out, todo = set(), [nid]
        while todo:
            x = todo.pop()
            out.add(x)
            todo.extend(children.get(x, []))
        return out

    costs = [e for e in client.history(sid, kinds=["cost.recorded"])]
    for n in nodes:
        inside = [e["payload"] for e in costs if e["node_id"] in subtree(n["node_id"])]
        assert n["calls"] == len(inside)
        assert n["prompt_tokens"] == sum(p["prompt_tokens"] for p in inside)
        assert n["completion_tokens"] == sum(p["completion_tokens"] for p in inside)
        assert n["cost"] == pytest.approx(sum(p["cost"] for p in inside), rel=1e-9)
    phases = [n for n in nodes if n["kind"] == "phase"]
    total = client.cost(sid)["total"]["cost"]
    assert sum(p["cost"] for p in phases) == pytest.approx(total, rel=1e-9) and total > 0
    shown = {s["node_id"]: s["cost"] for s in client.session(sid)["steps"]}
    by_step = {s["node_id"]: s["cost"] for s in client.cost(sid)["by_step"]}
    assert all(shown[n["node_id"]] == n["cost"] for n in nodes)
    assert all(by_step[n["node_id"]] == n["cost"] for n in nodes if n["kind"] != "agent")


def test_events_filter_by_node_with_children_and_by_agent(shared_client) -> None:
    """``node`` returns the events of that node and of every node nested in it, ``agent`` the events of
    one agent; both combine."""
    client = shared_client
    sid = client.start("planning_and_control", params={"max_steps": 2})
    assert client.wait(sid, timeout=90)["status"] == "completed"
    nodes = client.dag(sid)["dag"]["nodes"]
    planning = next(n for n in nodes if n["name"] == "planning")
    inside = {planning["node_id"]} | {n["node_id"] for n in nodes if n["parent_node"] == planning["node_id"]}
    everything = list(client.history(sid))
    got = list(client.history(sid, node=planning["node_id"]))
    assert [e["seq"] for e in got] == [e["seq"] for e in everything if e["node_id"] in inside]
    assert {e["payload"].get("agent") for e in got if e["kind"] == "llm.request"} == {"planner", "plan_reviewer"}
    planner = list(client.history(sid, agent="planner"))
    assert planner and all(e["payload"]["agent"] == "planner" for e in planner)
    assert [e["seq"] for e in planner] == [e["seq"] for e in everything if e["payload"].get("agent") == "planner"]
    both = list(client.history(sid, node=planning["node_id"], agent="plan_reviewer"))
    assert both and all(e["payload"]["agent"] == "plan_reviewer" for e in both)


def test_tags_and_session_list_filters_are_honoured_or_refused(client) -> None:
    """Sessions started with tags are found by tag, by workflow and by creation time; an unknown filter
    is refused (never silently ignored)."""
    t0 = time.time()
    a = client.start("demo.count", params={"n": 1}, tags={"project": "alpha", "owner": "ann"})
    b = client.start("demo.count", params={"n": 1}, tags={"project": "beta"})
    c = client.start("labd_fidelityflows:spend_loop", params={"calls": 1}, tags={"project": "alpha"})
    for sid in (a, b, c):
        client.wait(sid, timeout=60)
    assert {s["id"] for s in client.sessions(tags={"project": "alpha"})} == {a, c}
    assert [s["id"] for s in client.sessions(tags={"project": "alpha", "owner": "ann"})] == [a]
    assert {s["id"] for s in client.sessions(workflow="demo.count")} == {a, b}
    assert {s["id"] for s in client.sessions(since=t0 - 1)} == {a, b, c}
    assert client.sessions(since=time.time() + 60) == []
    assert client.session(a)["tags"] == {"project": "alpha", "owner": "ann"}
    with pytest.raises(LabdError) as refused:
        client.request("session.list", name="x")
    assert refused.value.code == "bad_request" and refused.value.details == {"field": "name"}  # named, as elsewhere
    # an empty status list is every status, as the protocol says (a client not in Python sends it; it listed none)
    assert {s["id"] for s in client.request("session.list", status=[])["sessions"]} >= {a, b, c}
    with pytest.raises(LabdError) as bad_tag:
        client.start("demo.count", tags={"project": 3})
    assert bad_tag.value.code == "bad_request", bad_tag.value


def test_cost_across_sessions_equals_the_sum_of_sessions(client) -> None:
    """``cost.summary`` over all sessions: its total is the sum of the sessions' costs, and grouping by
    model, workflow, tag, day or session splits that same total."""
    sids = [client.start("labd_fidelityflows:spend_loop", params={"calls": n}, tags={"team": t})
            for n, t in ((2, "red"), (3, "blue"))]
    sids.append(client.start("labd_fidelityflows:plain_ag2"))
    for sid in sids:
        assert client.wait(sid, timeout=90)["status"] == "completed"
    per_session = {sid: client.cost(sid)["total"]["cost"] for sid in sids}
    expected = sum(per_session.values())
    for by in ("model", "workflow", "tag", "day", "session"):
        summary = client.cost_summary(by=by)
        assert summary["total"]["cost"] == pytest.approx(expected, rel=1e-9)
        assert summary["total"]["sessions"] == 3
        if by != "tag":
            assert sum(g["cost"] for g in summary["groups"]) == pytest.approx(expected, rel=1e-9)
    tags = {g["tag"]: g for g in client.cost_summary(by="tag")["groups"]}
    assert tags["team=red"]["cost"] == pytest.approx(per_session[sids[0]], rel=1e-9)
    assert tags["(untagged)"]["cost"] == pytest.approx(per_session[sids[2]], rel=1e-9)
    sessions = {g["session"]: g["cost"] for g in client.cost_summary(by="session")["groups"]}
    assert sessions == pytest.approx(per_session, rel=1e-9)
    assert client.cost_summary(since=time.time() + 60)["total"]["calls"] == 0


def test_cli_flags_for_full_events_tags_and_cost_across_sessions(daemon) -> None:
    """``labd run --tag``, ``labd ps --tag/--workflow/--since``, ``labd events --full --agent`` and
    ``labd cost --all --by`` (and ``--since``, however far back) reach the daemon and print what they asked for."""
    import subprocess
    import sys

    def labd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=90)

    sid = labd("run", "labd_fidelityflows:big_reply", "-p", "chars=6000", "--tag", "team=red").stdout.strip()
    with daemon.client() as c:
        assert c.wait(sid, timeout=60)["status"] == "completed"
    listed = labd("ps", "--tag", "team=red", "--since", "1h", "--workflow", "labd_fidelityflows:big_reply", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [sid], listed.stderr
    assert json.loads(labd("ps", "--tag", "team=blue", "--json").stdout) == []
    full = labd("events", sid, "--full", "--agent", "writer", "--json", "--kind", "llm.response")
    (resp,) = [json.loads(line) for line in full.stdout.splitlines()]
    assert isinstance(resp["payload"]["content"], str) and len(resp["payload"]["content"]) == 6000
    # an agent the session has not got: nothing printed, and stderr says which filter left nothing (it was silent)
    nobody = labd("events", sid, "--agent", "nobody", "--kind", "llm")
    assert nobody.returncode == 0 and nobody.stdout == "", nobody
    assert f"no events of {sid} match --agent nobody --kind llm" in nobody.stderr, nobody.stderr
    assert "match" not in full.stderr  # a selection that found events says nothing
    cost = labd("cost", "--all", "--by", "tag", "--json")
    groups = {g["tag"]: g for g in json.loads(cost.stdout)["groups"]}
    assert groups["team=red"]["sessions"] == 1
    text = labd("cost", "--all", "--by", "tag").stdout  # says what it counts: sessions that called a model
    assert text.startswith("1 session with LLM calls: $"), text
    assert text.splitlines()[1].split()[:2] == ["TAG", "SESSIONS"], text
    # by session, a row is one session: no SESSIONS column (it read 1 on every row)
    header = labd("cost", "--all", "--by", "session").stdout.splitlines()[1].split()
    assert header == ["SESSION", "CALLS", "PROMPT", "COMPLETION", "COST"], header
    # a --since reaching before 1970 counts every session (it was refused: "field 'since' must be a time ...")
    ever = labd("cost", "--all", "--since", "60000d", "--json")
    assert ever.returncode == 0 and json.loads(ever.stdout)["total"]["sessions"] == 1, ever.stderr
    recent = labd("cost", "--all", "--since", "1ms", "--json")  # a cutoff after the session's calls: none counted
    assert recent.returncode == 0 and json.loads(recent.stdout)["total"]["sessions"] == 0, recent.stdout
    assert "follow" in labd("events", sid, "--full", "--follow").stderr


def test_events_for_a_node_the_session_lacks_is_unknown_node(shared_client) -> None:
    """``events.query`` with a ``node`` the session does not have (a typo, or a step's name where an id is
    asked for) is refused ``unknown_node`` listing the session's node ids, rather than answered with no events,
    which read as "that node did nothing"."""
    client = shared_client
    sid = client.start("demo.count", params={"n": 1})
    assert client.wait(sid, timeout=60)["status"] == "completed"
    nodes = [n["node_id"] for n in client.dag(sid)["dag"]["nodes"]]
    with pytest.raises(LabdError) as err:
        client.events(sid, node="n999")
    assert err.value.code == "unknown_node"
    assert err.value.details["nodes"] == nodes
    assert nodes, "demo.count n=1 records one step: the known nodes listed must not be empty"
    assert client.events(sid, node=nodes[0])["events"]


def test_events_of_a_kind_labd_does_not_have_are_refused_naming_it(shared_client) -> None:
    """``events.query`` with a ``kinds`` entry that is no event kind (``step.strated``, ``stdout`` for ``output``) is
    refused ``bad_request`` naming it, with ``details.field`` ``kinds``, rather than answered with no events, which
    read as "the session had none of those"; known kinds still filter."""
    client = shared_client
    sid = client.start("demo.count", params={"n": 1})
    assert client.wait(sid, timeout=60)["status"] == "completed"
    with pytest.raises(LabdError) as err:
        client.events(sid, kinds=["step.started", "step.strated"])
    assert err.value.code == "bad_request" and err.value.details == {"field": "kinds"}
    assert "'step.strated' is no event kind" in str(err.value), str(err.value)
    assert [ev["kind"] for ev in client.events(sid, kinds=["step.started"])["events"]] == ["step.started"]


def test_labd_events_kind_that_starts_no_kind_is_refused(shared_client) -> None:
    """``labd events SESSION --kind stpe`` (no event kind starts so) exits 2 with one line naming it, rather than
    printing nothing with exit 0, which read as "no such events"; ``--kind step`` (a start of kinds) still filters."""
    import subprocess
    import sys

    sid = shared_client.start("demo.count", params={"n": 1})
    assert shared_client.wait(sid, timeout=60)["status"] == "completed"
    run = [sys.executable, "-m", "labd", "events", sid, "--kind"]
    wrong = subprocess.run([*run, "stpe"], capture_output=True, text=True, timeout=90)
    assert wrong.returncode == 2 and wrong.stdout == "", (wrong.returncode, wrong.stdout)
    assert wrong.stderr.startswith("labd: --kind: no event kind 'stpe' (nor any starting so)"), wrong.stderr
    steps = subprocess.run([*run, "step", "--json"], capture_output=True, text=True, timeout=90)
    kinds = {json.loads(line)["kind"] for line in steps.stdout.splitlines()}
    assert steps.returncode == 0 and kinds and all(k.startswith("step.") for k in kinds), steps.stderr
