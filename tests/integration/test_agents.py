"""ag2 workflows with automatic tracking: DAG shape, every agent/LLM/tool/code event once, costs, files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

OFFLINE_PRICE = (1.00, 2.00)  # labd-offline's nominal USD per million tokens (runner/agents/pricing.py)


@pytest.fixture
def client(shared_daemon) -> Iterator[Any]:
    """A client of the module's shared daemon (each test starts and asserts on its own sessions)."""
    with shared_daemon.client() as c:
        yield c


def _events(client, sid):
    return list(client.history(sid))


def _by_kind(events, kind):
    return [e for e in events if e["kind"] == kind]


def test_planning_and_control_records_the_exact_dag_and_every_call_once(client) -> None:
    """planning_and_control with the scripted model: the DAG has the expected shape; every LLM call,
    tool call and code execution is recorded exactly once with the right node and agent; the session
    cost is the sum of usage x price; each file is attributed to the step whose code wrote it."""
    sid = client.start("planning_and_control", params={"max_steps": 3})
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    events = _events(client, sid)
    dag = client.dag(sid)["dag"]
    nodes = {n["node_id"]: n for n in dag["nodes"]}
    by_name = {n["name"]: n for n in dag["nodes"] if n["kind"] != "agent"}

    # --- shape: two phases in sequence; three steps in control, in sequence; agents inside
    planning, control = by_name["planning"], by_name["control"]
    assert planning["kind"] == control["kind"] == "phase"
    steps = sorted((n for n in dag["nodes"] if n["kind"] == "step"), key=lambda n: n["start_seq"])
    # each step runs its agent in attempt nodes (attempt 1, 2, ... on retries)
    attempt_of = {n["node_id"]: n["parent_node"] for n in dag["nodes"] if n["kind"] == "attempt"}
    assert [s["name"].split(":")[0] for s in steps] == ["step 1", "step 2", "step 3"]
    assert all(s["parent_node"] == control["node_id"] and s["status"] == "completed" for s in steps)
    edges = {(e["src"], e["dst"], e["type"]) for e in dag["edges"]}
    assert (planning["node_id"], control["node_id"], "sequence") in edges
    for a, b in zip(steps, steps[1:], strict=False):
        assert (a["node_id"], b["node_id"], "sequence") in edges
    agents = [n for n in dag["nodes"] if n["kind"] == "agent"]
    assert sorted(n["agent"] for n in agents if n["parent_node"] == planning["node_id"]) == ["plan_reviewer",
                                                                                             "planner"]
    for s in steps:
        inside = [n for n in agents if attempt_of.get(n["parent_node"]) == s["node_id"]]
        assert len(inside) == 1 and inside[0]["agent"] in ("engineer", "researcher")
        assert (s["node_id"], inside[0]["parent_node"], "contains") in edges
        assert (inside[0]["parent_node"], inside[0]["node_id"], "contains") in edges
    assert all(e["src"] in nodes and e["dst"] in nodes for e in dag["edges"])

    # --- every LLM call exactly once, paired, on the agent's own node
    requests, responses = _by_kind(events, "llm.request"), _by_kind(events, "llm.response")
    assert len(requests) == len(responses) == len(_by_kind(events, "cost.recorded")) >= 7
    by_src = {e["src_seq"]: e for e in events if e["src"] == "runner"}
    assert sorted(by_src[r["parent"]]["seq"] for r in responses) == sorted(r["seq"] for r in requests)
    for e in requests + responses + _by_kind(events, "tool.call") + _by_kind(events, "code.execution"):
        node = nodes[e["node_id"]]
        assert node["kind"] == "agent" and node["agent"] == e["payload"]["agent"], e
        assert e["payload"].get("offline", True) is True
    calls, results = _by_kind(events, "tool.call"), _by_kind(events, "tool.result")
    assert len(calls) == len(results) == len(_by_kind(events, "code.execution"))
    assert Counter(c["payload"]["call_id"] for c in calls) == Counter(r["payload"]["call_id"] for r in results)
    assert all(r["payload"]["status"] == "ok" for r in results)
    assert all(x["payload"]["exit_code"] == 0 for x in _by_kind(events, "code.execution"))

    # --- cost: usage x price, summed per call; per-agent sums add up to the session total
    expected = sum(r["payload"]["usage"]["prompt_tokens"] * OFFLINE_PRICE[0]
                   + r["payload"]["usage"]["completion_tokens"] * OFFLINE_PRICE[1] for r in responses) / 1e6
    cost = client.cost(sid)
    assert cost["total"]["cost"] == pytest.approx(expected, rel=1e-9)
    assert client.session(sid)["cost"] == pytest.approx(expected, rel=1e-9)
    assert sum(g["cost"] for g in cost["by_agent"]) == pytest.approx(expected, rel=1e-9)
    assert {g["model"] for g in cost["by_model"]} == {"labd-offline"} and cost["total"]["offline"]

    # --- files: each engineer step's output file, attributed to that step and the engineer
    files = client.files(sid)
    engineer_steps = [s for s in steps if any(attempt_of.get(n["parent_node"]) == s["node_id"]
                                              and n["agent"] == "engineer"
                                              for n in agents)]
    assert engineer_steps
    for s in engineer_steps:
        n = int(s["name"].split()[1].rstrip(":"))
        f = next(f for f in files if f["path"] == f"step_{n}.json")
        assert f["step_node"] == s["node_id"] and f["agent"] == "engineer" and f["tool"] == "run_code"
        assert f["change"] == "created" and len(f["sha256"]) == 64 and f["kind"] == "data"


def test_user_workflow_without_tracking_code_gets_the_same_events(client) -> None:
    """A workflow in a test module that only builds agents and asks them (no steps, no emits) still
    yields agent turns, LLM calls, tool calls, code execution, costs and files."""
    sid = client.start("labd_testflows:agent_flow")
    assert client.wait(sid, timeout=60)["status"] == "completed"
    kinds = Counter(e["kind"] for e in _events(client, sid))
    for kind in ("agent.turn.started", "agent.turn.finished", "llm.request", "llm.response", "agent.message",
                 "cost.recorded", "tool.call", "tool.result", "code.execution", "file.created"):
        assert kinds[kind] >= 1, kind
    agents = {e["payload"]["agent"] for e in _events(client, sid) if e["kind"] == "agent.turn.started"}
    assert agents == {"my_engineer", "my_helper"}
    assert [f["path"] for f in client.files(sid)] == ["step_7.json"]


def test_deep_research_runs_independent_steps_concurrently_with_no_tracking_code(client) -> None:
    """deep_research: four phases; literature reviews and independent plan steps overlap in time;
    the synthesis writes report.md, attributed to the synthesis phase."""
    sid = client.start("deep_research", params={"subquestions": 3, "max_steps": 3})
    assert client.wait(sid, timeout=90)["status"] == "completed"
    dag = client.dag(sid)["dag"]
    phases = [n["name"] for n in sorted(dag["nodes"], key=lambda n: n["start_seq"]) if n["kind"] == "phase"]
    assert phases == ["literature review", "planning", "control", "synthesis"]
    reviews = [n for n in dag["nodes"] if n["name"].startswith("review ")]
    assert len(reviews) == 3
    # concurrent: every review started before the first one finished
    assert max(r["started_at"] for r in reviews) < min(r["ended_at"] for r in reviews)
    report = [f for f in client.files(sid) if f["path"] == "report.md"]
    assert report and report[0]["step"] == "synthesis"


def test_two_concurrent_ag2_sessions_share_nothing(client) -> None:
    """Two agent sessions at once: no event, file or cost of one appears in the other."""
    a = client.start("planning_and_control", params={"task": "ALPHA task\n- alpha one\n- alpha two"})
    b = client.start("planning_and_control", params={"task": "BRAVO task\n- bravo one\n- bravo two"})
    for sid in (a, b):
        assert client.wait(sid, timeout=90)["status"] == "completed"
    for sid, mine, other in ((a, "ALPHA", "BRAVO"), (b, "BRAVO", "ALPHA")):
        text = " ".join(str(e["payload"]) for e in _events(client, sid))
        assert mine in text and other not in text and other.lower() not in text
        files = client.files(sid)
        assert files, f"session {sid} recorded no files: the check below would pass on nothing"
        assert all(f["path"].startswith("step_") for f in files), files
    ca, cb = client.cost(a)["total"], client.cost(b)["total"]
    assert ca["calls"] == len(_by_kind(_events(client, a), "llm.response"))
    assert cb["calls"] == len(_by_kind(_events(client, b), "llm.response"))


def test_budget_stops_a_session_when_crossed(client) -> None:
    """A session whose LLM cost crosses its budget is stopped like any other limit, with the reason. Two sides
    catch it: the daemon from the cost events (``limit.exceeded``) and the runner before the next LLM call
    (``budget.exceeded``); whichever is first, the session's reason is the same (CI saw the runner win)."""
    sid = client.start("planning_and_control", params={"max_steps": 3}, budget=0.0005)
    final = client.wait(sid, timeout=60)
    assert final["status"] == "failed"
    assert final["reason"].startswith("stopped: budget $") and "> limit $0.000500" in final["reason"], final["reason"]
    events = _events(client, sid)
    by_daemon = [e["payload"] for e in _by_kind(events, "limit.exceeded") if e["payload"]["limit"] == "budget"]
    by_runner = [e["payload"] for e in _by_kind(events, "budget.exceeded")]
    assert by_daemon or by_runner, "no record of the budget breach"
    for p in by_daemon:
        assert p["measured"] > p["max"] == 0.0005 and f"${p['measured']:.6f}" in final["reason"]
    for p in by_runner:
        assert p["spent"] >= p["budget"] == 0.0005 and p["action"] == "stop"


def test_sub_agents_and_human_input_requests_are_tracked(client) -> None:
    """A sub-agent run as a tool is recorded (subagent.started/finished) and its own turn is a DAG node
    nested under the delegating agent's; an agent asking a human creates a durable approval of kind
    human_input whose feedback becomes the agent's answer."""
    from tests.conftest import wait_until

    sid = client.start("labd_testflows:delegation")
    ap = wait_until(lambda: client.approvals(sid), timeout=60, what="the human-input request")[0]
    assert ap["kind"] == "human_input" and ap["prompt"] == "Publish the poem?"
    client.approve(sid, feedback="yes, publish it")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    events = _events(client, sid)
    started, finished = _by_kind(events, "subagent.started"), _by_kind(events, "subagent.finished")
    assert len(started) == len(finished) == 1
    assert started[0]["payload"]["child"] == "writer" and finished[0]["payload"]["status"] == "completed"
    assert "A poem about limits." in finished[0]["payload"]["result"]
    nodes = {n["node_id"]: n for n in client.dag(sid)["dag"]["nodes"]}
    writer = next(n for n in nodes.values() if n["agent"] == "writer")
    assert nodes[writer["parent_node"]]["agent"] == "boss"
    answer = next(e for e in _by_kind(events, "tool.result") if e["payload"]["name"] == "ask_human")
    assert answer["payload"]["result"] == "yes, publish it"
    requested = _by_kind(events, "approval.requested")[0]
    assert requested["payload"]["agent"] == "boss" and nodes[requested["node_id"]]["agent"] == "boss"


def test_files_are_attributed_exactly_when_steps_run_concurrently(client) -> None:
    """deep_research runs its plan steps concurrently in one work directory; each step's output file is
    still attributed to the step (and engineer) whose code wrote it."""
    sid = client.start("deep_research", params={"subquestions": 2, "max_steps": 4})
    assert client.wait(sid, timeout=90)["status"] == "completed"
    files = [f for f in client.files(sid) if f["path"].startswith("step_")]
    assert len(files) >= 3
    for f in files:
        n = f["path"].removeprefix("step_").removesuffix(".json")
        assert f["step"].startswith(f"step {n}:"), (f["path"], f["step"])
        assert (f["agent"], f["tool"]) == ("engineer", "run_code")
