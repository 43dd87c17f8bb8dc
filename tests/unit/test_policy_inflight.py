"""The policy's view of LLM calls in flight (labd.runner.agents.inflight, PolicyGate.check_llm): a call whose
decision the calls in flight could change once priced waits for them; one they cannot change, or one made inside
another call, does not."""

from __future__ import annotations

import asyncio
from typing import Any

from labd.ipc.policy import Policy
from labd.ipc.policy_rules import parse_rules
from labd.runner.agents.policy import PolicyGate


def _gate(*tables: dict[str, Any]) -> tuple[PolicyGate, dict[str, float], list[tuple[str, dict[str, Any]]]]:
    """A gate over ``tables``, the costs it reads (agent -> USD spent; "" is the session's) and its events."""
    spent: dict[str, float] = {"": 0.0}
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], node: Any = None, parent: Any = None) -> int:
        events.append((kind, payload))
        return len(events)

    gate = PolicyGate(Policy(parse_rules(list(tables), "test")), emit, None,
                      lambda agent: (spent.get(agent or "", 0.0), spent[""]))
    return gate, spent, events


def _spend(spent: dict[str, float], agent: str, cost: float) -> None:
    spent[agent] = spent.get(agent, 0.0) + cost
    spent[""] += cost


async def _spins(task: asyncio.Task[Any], n: int = 5) -> bool:
    """Whether ``task`` is still waiting after ``n`` of its polls."""
    for _ in range(n):
        await asyncio.sleep(0.01)
    return not task.done()


def test_a_call_waits_while_a_call_in_flight_could_take_its_agent_to_the_cap() -> None:
    """Agent a has spent 0.6 of a per-agent cap of 1.0 and has a call in flight reserving 0.5: a's next call waits
    for it, and is decided on the price it got (refused: 1.1 spent); agent b's call is not held by a's."""
    gate, spent, events = _gate({"name": "cap", "effect": "cap", "max_cost": 1.0})

    async def scenario() -> None:
        gate.in_flight.admitted("a", 0.2)
        _spend(spent, "a", 0.6)
        gate.in_flight.priced("a", 0.2, real=True)  # one call priced: answers are bounded from now on
        gate.in_flight.admitted("a", 0.5)
        waiting = asyncio.ensure_future(gate.check_llm("a", "m", "n1"))
        assert await _spins(waiting)
        assert await gate.check_llm("b", "m", "n2") is None  # b's cost is b's own
        _spend(spent, "a", 0.5)
        gate.in_flight.priced("a", 0.5, real=True)
        refused = await asyncio.wait_for(waiting, 5)
        assert refused is not None and "cost cap reached" in refused

    asyncio.run(scenario())
    decided = [p for k, p in events if k == "policy.decision"]
    assert [(d["agent"], d["outcome"]) for d in decided] == [("b", "allowed"), ("a", "denied")]


def test_before_any_call_was_priced_a_call_in_flight_holds_calls_a_cost_rule_decides() -> None:
    """No call priced yet: nothing bounds an answer, so a call in flight holds the next call of a session with a
    session cap, until it is priced; a session whose rules do not look at costs never waits."""
    gate, spent, _ = _gate({"name": "cap", "effect": "cap", "per": "session", "max_cost": 1.0})
    free, _, _ = _gate({"name": "no-x", "effect": "deny", "model": "x"})

    async def scenario() -> None:
        free.in_flight.admitted("a", 0.0)
        assert await asyncio.wait_for(free.check_llm("b", "m", None), 5) is None
        gate.in_flight.admitted("a", 0.0)
        waiting = asyncio.ensure_future(gate.check_llm("b", "m", None))
        assert await _spins(waiting)
        _spend(spent, "a", 0.1)
        gate.in_flight.priced("a", 0.0, real=True)
        assert await asyncio.wait_for(waiting, 5) is None  # 0.1 of 1.0: allowed

    asyncio.run(scenario())


def test_a_call_made_inside_a_call_in_flight_does_not_wait_for_it() -> None:
    """A call made inside another one (a checking middleware, a model consulting an agent) is decided at once on the
    costs priced so far: waiting for the call it is in would never end."""
    gate, _, _ = _gate({"name": "cap", "effect": "cap", "per": "session", "max_cost": 1.0})

    async def scenario() -> None:
        gate.in_flight.admitted("a", 0.0)
        assert await asyncio.wait_for(gate.check_llm("a", "m", None, nested=True), 5) is None

    asyncio.run(scenario())


def test_a_failed_call_leaves_the_calls_in_flight_and_says_nothing_of_prices() -> None:
    """A call that ended without a price (a failure) leaves the count of calls in flight; it does not count as
    priced, so the calls after it are still held while another is in flight."""
    gate, _, _ = _gate({"name": "cap", "effect": "cap", "per": "session", "max_cost": 1.0})
    gate.in_flight.admitted("a", 0.3)
    gate.in_flight.admitted("a", 0.3)
    gate.in_flight.priced("a", 0.3, real=False)
    assert gate.in_flight.pending("a") == (float("inf"), float("inf"))
    gate.in_flight.priced("a", 0.3, real=False)
    assert gate.in_flight.pending("a") is None
    gate.in_flight.admitted("b", 0.25)
    gate.in_flight.priced("b", 0.25, real=True)
    gate.in_flight.admitted("b", 0.25)
    assert gate.in_flight.pending("a") == (0.0, 0.25) and gate.in_flight.pending("b") == (0.25, 0.25)
