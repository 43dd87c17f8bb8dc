"""Retries and plans in the DAG: each attempt a node with its real error; planned steps before they run."""

from __future__ import annotations


def test_a_failing_then_succeeding_retry_is_two_attempt_nodes(client) -> None:
    """A step that fails once: attempt 1 is ``failed`` with the real error (the exception from the
    traceback's last lines), attempt 2 ``completed`` with a ``retry`` edge from attempt 1; a ``retry`` event
    names the failed attempt; the retry's prompt carries that same error; the step itself completes."""
    sid = client.start("planning_and_control", params={"task": "Go.\n- compute FAIL_ONCE values", "max_steps": 1})
    final = client.wait(sid, timeout=90)
    assert final["status"] == "completed", final["reason"]
    dag = client.dag(sid)["dag"]
    attempts = sorted((n for n in dag["nodes"] if n["kind"] == "attempt"), key=lambda n: n["attempt"])
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "completed")]
    error = attempts[0]["error"]
    assert "RuntimeError: simulated failure in step" in error and "Traceback" not in error.split(":", 1)[0]
    assert {"src": attempts[0]["node_id"], "dst": attempts[1]["node_id"], "type": "retry"} in dag["edges"]
    step = next(n for n in dag["nodes"] if n["node_id"] == attempts[0]["parent_node"])
    assert step["kind"] == "step" and step["status"] == "completed" and attempts[1]["parent_node"] == step["node_id"]
    events = list(client.history(sid))
    (retry,) = [e for e in events if e["kind"] == "retry"]
    assert retry["payload"]["previous_node"] == attempts[0]["node_id"] and retry["payload"]["attempt"] == 2
    assert retry["payload"]["error"] == error
    inputs = [e["payload"]["input"] for e in events if e["kind"] == "agent.turn.started"
              and any(n["node_id"] == e["payload"].get("parent_node") for n in attempts[1:])]
    assert inputs and f"Previous attempt failed: {error}" in inputs[0]


def test_planned_steps_are_in_the_dag_before_they_run(client) -> None:
    """After planning, every announced step is a DAG node with status ``planned`` (all three recorded
    before the first one starts); each runs as that same node: planned -> running -> completed."""
    sid = client.start("planning_and_control", params={"task": "Go.\n- one\n- two\n- three", "max_steps": 3})
    final = client.wait(sid, timeout=90)
    assert final["status"] == "completed", final["reason"]
    steps = [n for n in client.dag(sid)["dag"]["nodes"] if n["kind"] == "step"]
    assert len(steps) == 3 and all(n["status"] == "completed" for n in steps)
    history = [h for h in client.state_history(sid) if h["node_id"] in {n["node_id"] for n in steps}]
    for n in steps:
        mine = [(h["from_status"], h["to_status"]) for h in history if h["node_id"] == n["node_id"]]
        assert mine == [(None, "planned"), ("planned", "running"), ("running", "completed")], mine
    planned_at = [h["seq"] for h in history if h["to_status"] == "planned"]
    first_run = min(h["seq"] for h in history if h["to_status"] == "running")
    assert max(planned_at) < first_run
