"""Unit tests for the tracking's per-call fast paths: they record exactly what the general code records."""

from __future__ import annotations

import asyncio
import enum
import uuid
from typing import Any

from labd.runner.agents.fidelity import BLOB_MIN, BlobSender, event_form, jsonable
from labd.runner.agents.pricing import PriceTable


class _Colour(enum.Enum):
    RED = "red"


def _recording_text(threshold: int) -> tuple[Any, list[str]]:
    """A ``text`` callback like the blob sender's, which also records the order it saw the strings in."""
    seen: list[str] = []

    def text(s: str) -> Any:
        seen.append(s)
        return s if len(s) < threshold else {"$blob": str(len(s)), "size": len(s)}
    return text, seen


def _real_history() -> list[Any]:
    """Every event a real ag2 conversation with a tool call shows the model (requests, responses with tool
    calls and usage, tool results), collected by a middleware."""
    from ag2 import Agent, tool
    from ag2.middleware import BaseMiddleware

    from labd.runner.agents.offline import OfflineModelConfig

    seen: list[Any] = []

    class Collect(BaseMiddleware):
        async def on_llm_call(self, call_next: Any, events: Any, context: Any) -> Any:
            seen.extend(events)
            return await call_next(events, context)

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    async def run() -> None:
        agent = Agent("t", ['CALL_TOOL: add {"a": 1, "b": 2}'], config=OfflineModelConfig(),
                      tools=[tool(add)], middleware=[Collect])
        conv = await agent.ask("please add " + "z" * (BLOB_MIN + 5))
        await conv.ask("again")

    asyncio.run(run())
    return seen


def test_event_form_equals_jsonable_for_a_real_conversation() -> None:
    """For every event of a real conversation (tool call, tool result, long input), the one-pass form is
    jsonable's form, and long strings reach the blob callback in the same order."""
    history = _real_history()
    kinds = {type(e).__name__ for e in history}
    assert {"ModelRequest", "ModelResponse", "ToolResultsEvent"} <= kinds, kinds
    for event in history:
        text_a, seen_a = _recording_text(BLOB_MIN)
        text_b, seen_b = _recording_text(BLOB_MIN)
        assert event_form(event, text_a) == jsonable(event, text=text_b)
        assert seen_a == seen_b
    assert event_form(history[0]) == jsonable(history[0])  # no callback: strings as they are


def test_event_form_falls_back_for_values_it_does_not_handle() -> None:
    """Enums, UUIDs, bytes, non-string keys, deep nesting and an event class with its own ``to_dict``
    come out exactly as jsonable makes them."""
    from ag2.events import BaseEvent, ModelRequest, TextInput

    class Odd(BaseEvent):
        colour: Any = None
        ident: Any = None
        data: Any = None
        table: Any = None

    class Own(BaseEvent):
        value: Any = None

        def to_dict(self) -> dict[str, Any]:
            return {"custom": True}

    deep: Any = "leaf"
    for _ in range(45):
        deep = {"d": deep}
    cases = [
        Odd(colour=_Colour.RED, ident=uuid.UUID(int=5), data=b"\x00\x01", table={1: "one", (2, 3): ["x"]}),
        Odd(table={"inner": ModelRequest([TextInput("nested")])}),
        Odd(data=deep),
        Own(value=1),
    ]
    for event in cases:
        assert event_form(event) == jsonable(event), type(event).__name__
    assert event_form(Own(value=1)) == {"type": "Own", "custom": True}


def test_memoised_messages_serialise_as_jsonable_with_blob_references() -> None:
    """BlobSender.serialize_messages (which uses the one-pass form) gives jsonable's form with the long texts
    as references, and reports those texts as new once."""
    history = _real_history()
    sender = BlobSender()
    new: dict[str, str] = {}
    forms = sender.serialize_messages(history, new)
    reference = BlobSender()
    ref_new: dict[str, str] = {}
    expected = [reference.serialize(e, ref_new) for e in history]
    assert forms == expected and new == ref_new and len(new) == 1


def test_price_lookups_are_remembered_per_model_with_the_same_answers() -> None:
    """Exact names, longest prefixes, config overrides and unknown models price the same on every lookup."""
    table = PriceTable({"my-model": {"input": 1.5, "output": 3.0}})
    for _ in range(2):
        assert table.price("gpt-4o-mini").source == "default:gpt-4o-mini"
        assert table.price("gpt-4o-2024-08-06").source == "default:gpt-4o"
        mine = table.price("my-model")
        assert (mine.input, mine.output, mine.source) == (1.5, 3.0, "config:my-model")
        assert table.price("nobody-knows").source == "unknown"
    assert table.price("gpt-4o") is table.price("gpt-4o")


def test_the_message_memo_forgets_a_conversation_when_its_events_die() -> None:
    """A serialised message stays memoised while its event lives (served again without serialising) and
    its entry goes when the event is gone, so finished conversations are not kept alive; an object that
    cannot be weakly referenced is held by its entry instead, and still served from it."""
    import gc

    from ag2.events import ModelRequest, TextInput

    sender = BlobSender()
    message = ModelRequest([TextInput("hello")])
    first = sender.serialize_messages([message], {})
    assert len(sender._memo) == 1
    assert sender.serialize_messages([message], {})[0] is first[0]  # a memo hit: the same form object
    del message
    gc.collect()
    assert sender._memo == {}

    class Slotted:
        __slots__ = ("v",)

        def __init__(self, v: int) -> None:
            self.v = v

        def to_dict(self) -> dict[str, Any]:
            return {"v": self.v}

    held = Slotted(3)
    form = sender.serialize_messages([held], {})
    assert form == [{"type": "Slotted", "v": 3}]
    assert sender.serialize_messages([held], {})[0] is form[0]
