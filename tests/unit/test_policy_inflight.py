"""The policy's view of LLM calls in flight (labd.runner.agents.inflight, PolicyGate.check_llm): a call whose
decision the calls in flight could change once priced waits for them, and is decided and reserved in one step; one
they cannot change, one made inside another call, or one made while the budget pauses the session, does not."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from labd.ipc.policy import Policy
from labd.ipc.policy_rules import parse_rules
from labd.runner.agents.policy import PolicyGate
from labd.runner.context import Cancelled

SESSION_CAP = {"name": "cap", "effect": "cap", "per": "session", "max_cost": 1.0}


class Costs:
    """What the session spent, per agent and in all (thread-safe, as the tracker's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by: dict[str, float] = {}
        self.total = 0.0

    def __call__(self, agent: str | None) -> tuple[float, float]:
        with self.lock:
            return self.by.get(agent or "", 0.0), self.total

    def spend(self, agent: str, cost: float) -> None:
        with self.lock:
            self.by[agent] = self.by.get(agent, 0.0) + cost
            self.total += cost


def _gate(*tables: dict[str, Any], approvals: Any = None,
          check_stop: Any = None) -> tuple[PolicyGate, Costs, list[tuple[str, dict[str, Any]]]]:
    """A gate over ``tables``, the costs it reads and its events."""
    costs = Costs()
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], node: Any = None, parent: Any = None) -> int:
        events.append((kind, payload))
        return len(events)

    gate = PolicyGate(Policy(parse_rules(list(tables), "test")), emit, approvals, costs, check_stop=check_stop)
    return gate, costs, events


async def _call(gate: PolicyGate, costs: Costs, agent: str, cost: float, estimate: float,
                answered: asyncio.Event | None = None) -> bool:
    """One LLM call through the gate that costs ``cost`` once answered (after a moment, or once ``answered`` is
    set); whether it was made."""
    refused, reserved = await gate.check_llm(agent, "m", None, estimate=estimate)
    if refused is not None:
        return False
    await (answered.wait() if answered is not None else asyncio.sleep(0.02))
    costs.spend(agent, cost)  # counted first, then told: as the tracking middleware does
    if reserved is not None:
        gate.in_flight.priced(agent, reserved, cost, real=True)
    return True


async def _still_waiting(task: asyncio.Task[Any]) -> bool:
    for _ in range(5):
        await asyncio.sleep(0.01)
    return not task.done()


def test_a_call_waits_while_a_call_in_flight_could_take_its_agent_to_the_cap() -> None:
    """Agent a has spent 0.6 of a per-agent cap of 1.0 and has a call in flight: a's next call waits for it and is
    decided on the price it got (refused: 1.1 spent); agent b's call is not held by a's."""
    gate, costs, events = _gate({"name": "cap", "effect": "cap", "max_cost": 1.0})

    async def scenario() -> None:
        assert await _call(gate, costs, "a", 0.6, 0.6)  # priced: answers are bounded from now on
        answered = asyncio.Event()
        first = asyncio.ensure_future(_call(gate, costs, "a", 0.5, 0.5, answered))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(gate.check_llm("a", "m", "n1", estimate=0.5))
        assert await _still_waiting(waiting)
        assert (await gate.check_llm("b", "m", "n2", estimate=0.5))[0] is None  # b's cost is b's own
        answered.set()
        assert await first
        refused, reserved = await asyncio.wait_for(waiting, 5)
        assert refused is not None and "cost cap reached" in refused and reserved is None

    asyncio.run(scenario())
    assert [(p["agent"], p["outcome"]) for k, p in events if k == "policy.decision"] == [
        ("a", "allowed"), ("a", "allowed"), ("b", "allowed"), ("a", "denied")]


@pytest.mark.parametrize("estimate", [0.3, 0.05, float("nan"), -1.0])
def test_threads_calling_at_once_pass_a_cap_by_one_call_at_most(estimate: float) -> None:
    """Eight threads, each on its own event loop, call at the same moment under a session cap of 1.0, each call
    costing 0.3: decided and reserved in one step, at most the cap plus one call is spent, however low (or
    meaningless) the calls' estimates (the dearest call so far is the floor). Review helper-156: decided, then
    reserved, five to eight went through."""
    gate, costs, _ = _gate(SESSION_CAP)
    barrier = threading.Barrier(8)
    made: list[bool] = []

    def run(i: int) -> None:
        barrier.wait()
        made.append(asyncio.run(_call(gate, costs, f"t{i}", 0.3, estimate)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(made) == 8 and sum(made) >= 4  # 0.9 spent leaves room for one more
    assert 1.0 <= costs.total <= 1.3 + 1e-9, (costs.total, made)


def test_before_any_call_was_priced_only_calls_a_cost_rule_could_decide_wait() -> None:
    """No call priced yet: nothing bounds an answer. Agent a's call in flight holds b's next call under a session
    cap, but not under a per-agent one (a's spending is not b's); a session whose rules do not look at costs never
    waits, and counts nothing in flight."""
    per_agent, _, _ = _gate({"name": "cap", "effect": "cap", "max_cost": 1.0})
    session, costs, _ = _gate(SESSION_CAP)
    free, _, _ = _gate({"name": "no-x", "effect": "deny", "model": "x"})

    async def scenario() -> None:
        assert not free.costly and await free.check_llm("b", "m", None) == (None, None)
        assert per_agent.in_flight.admit("a", lambda pending: True, 0.0) is not None
        assert (await asyncio.wait_for(per_agent.check_llm("b", "m", None), 5))[0] is None
        answered = asyncio.Event()
        first = asyncio.ensure_future(_call(session, costs, "a", 0.1, 0.0, answered))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(session.check_llm("b", "m", None))
        assert await _still_waiting(waiting)
        answered.set()
        assert await first
        assert (await asyncio.wait_for(waiting, 5))[0] is None  # 0.1 of 1.0: allowed

    asyncio.run(scenario())


def test_a_call_inside_a_call_does_not_wait_one_under_a_budget_pause_does_and_a_stop_ends_a_wait() -> None:
    """A call made inside another one (it could wait for the call that waits for it) is decided at once on the costs
    priced so far; a call made while the budget pauses the session waits as any other (decided at once, calls went
    through the cap together after the resume: review helper-157); a stop asked while a call waits ends it
    (Cancelled), no decision recorded."""
    stop = threading.Event()

    def check_stop() -> None:
        if stop.is_set():
            raise Cancelled("stop")

    gate, _, events = _gate(SESSION_CAP, check_stop=check_stop)

    async def scenario() -> None:
        assert gate.in_flight.admit("a", lambda pending: True, 0.0) is not None  # in flight, not priced
        assert (await asyncio.wait_for(gate.check_llm("a", "m", None, nested=True), 5))[0] is None
        under_pause = asyncio.ensure_future(gate.check_llm("b", "m", None, paused=lambda: True))
        waiting = asyncio.ensure_future(gate.check_llm("c", "m", None))
        assert await _still_waiting(under_pause) and await _still_waiting(waiting)
        stop.set()
        for task in (under_pause, waiting):
            with pytest.raises(Cancelled):
                await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert [p["agent"] for k, p in events if k == "policy.decision"] == ["a"]


def test_a_call_a_human_approved_is_decided_again_on_the_costs_of_then() -> None:
    """An approval rule on LLM calls before a session cap: the call is asked about, and once approved, decided
    again on what was spent meanwhile: refused by the cap that another call reached while the human thought."""
    class Human:
        def request(self, *args: Any, **kwargs: Any) -> Any:
            costs.spend("other", 1.5)  # spent while the question waited
            return SimpleNamespace(approved=True, by="client", feedback=None)

    gate, costs, events = _gate(SESSION_CAP, {"name": "ask", "effect": "require_approval", "action": "llm"},
                                approvals=Human())
    refused, reserved = asyncio.run(gate.check_llm("a", "m", "n1", estimate=0.1))
    assert refused is not None and "cost cap reached" in refused and reserved is None
    assert [(p["rule"], p["outcome"]) for k, p in events if k == "policy.decision"] == [
        ("ask", "pending"), ("ask", "allowed"), ("cap", "denied")]
    assert gate.in_flight.pending("a") is None  # nothing left in flight
