"""Every ag2 agent a session runs is tracked, however it was built: plain ag2.Agent, networks, handoffs."""

from __future__ import annotations

from collections import Counter

COUNTED = ("llm.request", "llm.response", "tool.call", "tool.result", "cost.recorded", "agent.turn.started",
           "agent.turn.finished", "agent.handoff")


def _run(client, **params):
    sid = client.start("labd_fidelityflows:plain_ag2", params=params)
    final = client.wait(sid, timeout=90)
    assert final["status"] == "completed", final["reason"]
    return sid, list(client.history(sid))


def test_plain_ag2_workflow_has_the_same_events_as_its_ctx_agent_twin(client) -> None:
    """A workflow written with plain ``ag2.Agent(...)`` (two agents, a tool, an ag2 network group chat
    with a handoff tool) records the same counts of LLM requests/responses, tool calls/results, costs,
    agent turns and handoffs as the same workflow built with ``ctx.agent``; none of them is zero."""
    plain_sid, plain = _run(client, tracked=False)
    twin_sid, twin = _run(client, tracked=True)
    count_plain = Counter(e["kind"] for e in plain if e["kind"] in COUNTED)
    count_twin = Counter(e["kind"] for e in twin if e["kind"] in COUNTED)
    assert count_plain == count_twin
    assert all(count_plain[k] > 0 for k in COUNTED), count_plain
    assert count_plain["llm.request"] == count_plain["llm.response"] == count_plain["cost.recorded"]
    assert client.cost(plain_sid)["total"]["cost"] == client.cost(twin_sid)["total"]["cost"] > 0


def test_handoff_in_an_ag2_network_is_an_event_and_an_edge(client) -> None:
    """The triage agent's ``transfer_to_eng`` handoff tool passes the channel to the engineer: an
    ``agent.handoff`` event (from, to, tool, reason) on the engineer's turn node, a ``handoff`` DAG edge
    from the triage turn, and both turns nested in the step that ran the group chat."""
    sid, events = _run(client)
    handoffs = [e for e in events if e["kind"] == "agent.handoff"]
    assert len(handoffs) == 1
    h = handoffs[0]["payload"]
    assert (h["from"], h["to"], h["tool"], h["reason"]) == ("triage", "eng", "transfer_to_eng", "needs an engineer")
    dag = client.dag(sid)["dag"]
    nodes = {n["node_id"]: n for n in dag["nodes"]}
    assert nodes[handoffs[0]["node_id"]]["agent"] == "eng"
    assert nodes[h["from_node"]]["agent"] == "triage"
    assert {"src": h["from_node"], "dst": handoffs[0]["node_id"], "type": "handoff"} in dag["edges"]
    step = next(n for n in dag["nodes"] if n["name"] == "group chat")
    assert nodes[h["from_node"]]["parent_node"] == step["node_id"]
    assert nodes[handoffs[0]["node_id"]]["parent_node"] == step["node_id"]
