"""`labd mcp`'s read_events: the `kinds` it takes (whole kinds or their starts, as `labd events --kind`)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client as McpClient

from labd.frontends.mcp import build_server

pytestmark = pytest.mark.timeout(120)


def test_read_events_kinds_take_starts_and_refuse_what_names_no_kind(shared_daemon) -> None:
    """read_events with ``kinds=["llm"]`` returns the session's llm.request and llm.response events (a start of
    kinds, as ``labd events --kind llm``), and a kind that names none (``"llm.call"``) is a tool error listing the
    kinds. Before, the daemon's exact match answered both with no events: a model read "no LLM calls were made". An
    empty kind is refused too (the start of every kind: it returned all events)."""
    with shared_daemon.client() as c:
        sid = c.start("one_shot", params={"task": "Step 1 of 1: sum the squares"})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        llm = [e["seq"] for e in c.history(sid) if e["kind"].startswith("llm")]
    assert llm
    server = build_server(shared_daemon.home)

    async def go() -> tuple[Any, Any, Any, Any]:
        async with McpClient(server) as m:
            started = await m.call_tool("read_events", {"session": sid, "kinds": ["llm"]})
            exact = await m.call_tool("read_events", {"session": sid, "kinds": ["session.ended"]})
            wrong = await m.call_tool("read_events", {"session": sid, "kinds": ["llm.call"]})
            empty = await m.call_tool("read_events", {"session": sid, "kinds": [""]})
            return started, exact, wrong, empty

    started, exact, wrong, empty = anyio.run(go)
    assert not started.is_error and [e["seq"] for e in started.structured_content["events"]] == llm
    assert not exact.is_error and [e["kind"] for e in exact.structured_content["events"]] == ["session.ended"]
    assert wrong.is_error
    assert "'llm.call'" in wrong.content[0].text and "llm.request" in wrong.content[0].text
    assert "[bad_request]" in wrong.content[0].text
    assert empty.is_error and "empty event kind" in empty.content[0].text  # it read as every kind
