"""Unit tests for the runner side of capture fidelity: blob references, ag2 objects as JSON, budgets."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from labd.runner.agents.budget import Budget, BudgetExceeded
from labd.runner.agents.fidelity import BlobSender, jsonable, model_params


def test_long_strings_become_references_sent_once() -> None:
    """Strings at or above the threshold become ``$blob`` references; the text travels only the first
    time a sender sees it; short strings stay inline."""
    sender = BlobSender(threshold=100)
    big = "ü" * 150
    digest = hashlib.sha256(big.encode()).hexdigest()
    first, new = sender.externalize({"a": big, "b": ["short", {"c": big}]})
    assert first == {"a": {"$blob": digest, "size": 300}, "b": ["short", {"c": {"$blob": digest, "size": 300}}]}
    assert new == {digest: big}
    again, new2 = sender.externalize({"x": big})
    assert again == {"x": {"$blob": digest, "size": 300}} and new2 == {}


def test_ag2_events_serialise_with_their_type_and_content() -> None:
    """ag2 events become their own ``to_dict`` form plus a ``type``; nothing is lost or repr'd."""
    from ag2.events import ModelRequest, TextInput, ToolCallEvent

    request = jsonable(ModelRequest([TextInput("hello there")]))
    assert request["type"] == "ModelRequest" and request["parts"][0]["content"] == "hello there"
    call = jsonable(ToolCallEvent("f", arguments='{"a": 1}'))
    assert call["type"] == "ToolCallEvent" and call["name"] == "f" and call["arguments"] == '{"a": 1}'


def test_model_params_never_include_credentials() -> None:
    """Scalar model parameters are recorded; anything named like a key, token or secret is not."""
    @dataclass
    class Config:
        model: str = "m"
        temperature: float = 0.2
        api_key: str = "sk-secret"
        auth_token: str = "t"
        client: Any = object()

    assert model_params(Config()) == {"model": "m", "temperature": 0.2}


class _Call:
    agent = "a"
    node = "n1"


def test_budget_stop_refuses_at_the_limit_and_pause_waits_for_a_new_budget() -> None:
    """Below the budget a call passes; at it, ``stop`` raises BudgetExceeded with the figures and
    ``pause`` blocks in the pause hook, then continues under the budget the resume gave."""
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], node: Any = None) -> int:
        events.append((kind, payload))
        return len(events)

    stop = Budget(0.5, "stop", emit)
    asyncio.run(stop.check(lambda: 0.49, _Call()))
    with pytest.raises(BudgetExceeded, match=r"spent \$0\.500000 of \$0\.500000"):
        asyncio.run(stop.check(lambda: 0.5, _Call()))
    assert events[-1][0] == "budget.exceeded" and events[-1][1]["action"] == "stop"
    asked: list[str] = []
    pause = Budget(0.5, "pause", emit, pause=lambda reason: asked.append(reason) or 2.0)
    asyncio.run(pause.check(lambda: 0.7, _Call()))
    assert len(asked) == 1 and pause.limit == 2.0


def test_budget_holds_calls_back_while_those_in_flight_could_reach_it() -> None:
    """Calls made at once: the first is admitted alone (no price is known yet); once a call of $0.3 is priced, a
    call goes while spent + the calls in flight at $0.3 each stay under the $1 budget (a, b, c: 0.3 + 2 x 0.3 < 1),
    and the next one (d: 0.3 + 3 x 0.3) waits for them, to be refused once they are priced. So at most the budget
    plus one call is spent, where all four used to go."""
    budget = Budget(1.0, "stop", lambda *a, **k: 0)
    spent = [0.0]
    order: list[str] = []

    async def call(name: str) -> None:
        await budget.check(lambda: spent[0], _Call())
        order.append(f"{name} admitted")
        await asyncio.sleep(0.05)
        spent[0] += 0.3
        budget.priced(0.3)
        order.append(f"{name} priced")

    async def main() -> list[Any]:
        await call("first")
        return await asyncio.gather(*(call(n) for n in "abcd"), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert order[:5] == ["first admitted", "first priced", "a admitted", "b admitted", "c admitted"], order
    assert outcomes[:3] == [None, None, None] and isinstance(outcomes[3], BudgetExceeded)
    assert "d admitted" not in order and spent[0] == pytest.approx(1.2)  # the budget plus (less than) one call


def test_first_calls_at_once_go_one_at_a_time_until_one_is_priced() -> None:
    """Before any call is priced nothing bounds a call's cost: a second call waits for the first one's price."""
    budget = Budget(1.0, "stop", lambda *a, **k: 0)
    order: list[str] = []

    async def call(name: str) -> None:
        await budget.check(lambda: 0.0, _Call())
        order.append(f"{name} admitted")
        await asyncio.sleep(0.05)
        budget.priced(0.1)
        order.append(f"{name} priced")

    async def main() -> None:
        await asyncio.gather(call("a"), call("b"))

    asyncio.run(main())
    assert order == ["a admitted", "a priced", "b admitted", "b priced"]


def _paused_budget() -> tuple[Budget, threading.Event, list[str]]:
    """A $1 pausing budget whose pause hook records each pause and blocks until ``resume`` is set, then gives a new
    budget of $5."""
    resume = threading.Event()
    pauses: list[str] = []

    def pause(reason: str) -> float:
        pauses.append(reason)
        resume.wait(10)
        return 5.0

    return Budget(1.0, "pause", lambda *a, **k: 0, pause=pause), resume, pauses


def _priced_call(budget: Budget) -> Callable[[], Coroutine[Any, Any, None]]:
    """An LLM call of a session that has spent its $1: admitted by ``budget`` (after its pause), then priced (a
    later call waits for the calls in flight till then)."""
    async def call() -> None:
        await budget.check(lambda: 1.0, _Call())
        budget.priced(0.1)
    return call


def test_calls_reaching_a_pausing_budget_share_one_pause_and_a_cancelled_one_stops_waiting() -> None:
    """Three calls reach a pausing budget at once: the pause hook runs once (one pause, one resume), the resume's
    new budget is every call's, and a call cancelled while it waits for that pause is cancelled (its cancellation
    is not swallowed) without disturbing the others."""
    budget, resume, pauses = _paused_budget()

    call = _priced_call(budget)

    async def main() -> list[Any]:
        calls = [asyncio.ensure_future(call()) for _ in range(3)]
        await asyncio.sleep(0.2)  # all three reached the budget; one pauses, two wait for its pause
        calls[2].cancel()
        await asyncio.sleep(0.05)
        resume.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert len(pauses) == 1 and budget.limit == 5.0
    assert outcomes[:2] == [None, None] and isinstance(outcomes[2], asyncio.CancelledError), outcomes


def test_a_pausing_call_given_up_on_leaves_the_pause_and_its_budget_to_the_others() -> None:
    """The call whose pause the others share is cancelled (an asyncio.wait_for that gave up) while paused: the
    pause goes on, the others wait for it (no second pause), and the resume's budget holds (it was lost, and the
    others started a pause of their own)."""
    budget, resume, pauses = _paused_budget()
    call = _priced_call(budget)

    async def main() -> list[Any]:
        leader = asyncio.ensure_future(call())
        await asyncio.sleep(0.1)  # it pauses
        others = [asyncio.ensure_future(call()) for _ in range(2)]
        await asyncio.sleep(0.1)  # they wait for its pause
        leader.cancel()
        await asyncio.sleep(0.2)
        assert len(pauses) == 1 and not any(o.done() for o in others)  # still paused, for them
        resume.set()
        return await asyncio.gather(leader, *others, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], asyncio.CancelledError) and outcomes[1:] == [None, None], outcomes
    assert len(pauses) == 1 and budget.limit == 5.0
