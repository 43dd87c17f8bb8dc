"""Unit tests for the tracking's serialisation memo: each ag2 message is serialised once per session, and
what is recorded stays exactly the full request (replay's digest, blobs sent once, resent when forgotten)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import pytest

from labd.runner import replay
from labd.runner.agents import fidelity
from labd.runner.agents.fidelity import BLOB_MIN, BlobSender, jsonable


def _inline(obj: Any, texts: dict[str, str]) -> Any:
    """A recorded payload with every ``$blob`` reference replaced by its text (as ``events --full`` reads it)."""
    if isinstance(obj, dict):
        if set(obj) == {"$blob", "size"}:
            return texts[obj["$blob"]]
        return {k: _inline(v, texts) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_inline(v, texts) for v in obj]
    return obj


def test_a_growing_history_records_the_exact_full_request_each_call(tmp_path: Path) -> None:
    """A 12-turn conversation with a long reply in it: every llm.request, blobs inlined, equals the
    request serialised from scratch (and has replay's digest of it); each long text travels in exactly one
    event; and each message was serialised once, not once per call."""
    from labd.runner.agents import AgentFactory
    from labd.runner.agents.hooks import track_all_agents
    from labd.runner.approvals import Approvals
    from labd.runner.files import FileTracker

    events: list[tuple[str, dict[str, Any]]] = []
    seq = itertools.count(1)

    def emit(kind: str, payload: dict[str, Any], node: str | None = None, parent: int | None = None) -> int:
        events.append((kind, payload))
        return next(seq)

    ids = itertools.count(1)
    factory = AgentFactory(emit=emit, new_node_id=lambda: f"n{next(ids)}", workdir=tmp_path, models={}, prices={},
                           secrets={}, approvals=Approvals(emit, threading.Event()), files=FileTracker(tmp_path, emit))
    track_all_agents(lambda: factory)
    tracker = factory.tracker
    expected: list[dict[str, Any]] = []
    record = tracker.record_request

    def checked(call: Any, messages: Any, context: Any, tools: Any, schema: Any) -> int:
        # the request as it is at this call, serialised from scratch (no memo, no blobs)
        expected.append(tracker.full_request(call, messages, context, tools, schema))
        return record(call, messages, context, tools, schema)

    tracker.record_request = checked  # type: ignore[method-assign]
    serialised: list[Any] = []
    real = fidelity.event_form  # what the memo calls for each ag2 message it has not seen

    def counting(obj: Any, text: Any = None) -> Any:
        serialised.append(obj)
        return real(obj, text)

    long_text = "x" * (BLOB_MIN + 10)

    async def run() -> None:
        agent = factory.agent("memo", "Answer.")
        conv = await agent.ask("turn 0")
        for i in range(1, 12):
            conv = await conv.ask(long_text if i == 3 else f"turn {i}")

    mp = pytest.MonkeyPatch()
    mp.setattr(fidelity, "event_form", counting)
    try:
        asyncio.run(run())
    finally:
        mp.undo()
    requests = [p for k, p in events if k == "llm.request"]
    assert len(requests) == len(expected) == 12
    texts: dict[str, str] = {}
    carried: list[str] = []
    for _kind, payload in events:  # a text travels with the first event of any kind that refers to it
        texts.update(payload.get("blobs") or {})
        carried += list(payload.get("blobs") or {})
    assert len(carried) == len(set(carried)) >= 1  # each long text sent once
    for payload, full in zip(requests, expected, strict=True):
        recorded = _inline(payload["request"], texts)
        assert recorded == full
        assert replay.request_digest(recorded) == replay.request_digest(full)
    assert len(requests[-1]["request"]["messages"]) > 12  # the history really grew
    # every message object serialised exactly once across the 12 calls
    assert len(serialised) == len({id(m) for m in serialised}) > 12
    assert len(serialised) <= len(requests[-1]["request"]["messages"])


def test_a_forgotten_blob_travels_again_with_the_next_request_that_uses_it() -> None:
    """When the event carrying a text could not be sent (``forget``), the next serialisation of a memoised
    message that refers to it carries the text again."""
    from ag2.events import ModelRequest, TextInput

    sender = BlobSender(threshold=100)
    message = ModelRequest([TextInput("y" * 150)])
    new: dict[str, str] = {}
    first = sender.serialize_messages([message], new)
    assert len(new) == 1
    again: dict[str, str] = {}
    assert sender.serialize_messages([message], again) == first and again == {}
    sender.forget(new)
    resent: dict[str, str] = {}
    assert sender.serialize_messages([message], resent) == first and resent == new


def test_externalize_leaves_short_payloads_uncopied_and_never_mutates() -> None:
    """A payload with no long string comes back as the same object; one with a long string is a copy with
    the reference in it, the caller's dict untouched."""
    sender = BlobSender(threshold=10)
    short = {"a": "x", "n": 1, "l": [1, "y", {"z": None}], "d": {"k": 2.0}}
    out, new = sender.externalize(short)
    assert out is short and new == {}
    long = {"a": "x", "l": [1, {"z": "q" * 20}]}
    out, new = sender.externalize(long)
    assert out is not long and long["l"][1]["z"] == "q" * 20 and out["l"][1]["z"]["$blob"] in new
    assert out == {"a": "x", "l": [1, {"z": {"$blob": next(iter(new)), "size": 20}}]}


def test_jsonable_fast_paths_match_the_general_rules() -> None:
    """Exact dicts, lists and tuples (the fast path) give what the general rules give: keys as strings,
    tuples as lists, depth bounded by repr."""
    deep: Any = "leaf"
    for _ in range(45):
        deep = {"d": deep}
    assert jsonable({1: (1, 2.5, None, True)}) == {"1": [1, 2.5, None, True]}
    assert isinstance(jsonable(deep)["d"]["d"], dict)
    node = jsonable(deep)
    for _ in range(41):
        node = node["d"]
    assert isinstance(node, str) and node.startswith("{")
