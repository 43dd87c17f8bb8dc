"""Unit tests for the runner side of capture fidelity: blob references, ag2 objects as JSON, budgets."""

from __future__ import annotations

import asyncio
import hashlib
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
    asyncio.run(stop.check(0.49, _Call()))
    with pytest.raises(BudgetExceeded, match=r"spent \$0\.500000 of \$0\.500000"):
        asyncio.run(stop.check(0.5, _Call()))
    assert events[-1][0] == "budget.exceeded" and events[-1][1]["action"] == "stop"
    asked: list[str] = []
    pause = Budget(0.5, "pause", emit, pause=lambda reason: asked.append(reason) or 2.0)
    asyncio.run(pause.check(0.7, _Call()))
    assert len(asked) == 1 and pause.limit == 2.0
