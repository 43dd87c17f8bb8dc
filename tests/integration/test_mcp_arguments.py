"""`labd mcp`'s tools and the arguments a model gives them: one a tool does not take is refused, never ignored."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client as McpClient

from labd.frontends.mcp import build_server

pytestmark = pytest.mark.timeout(120)


def test_an_argument_a_tool_does_not_take_is_a_tool_error_naming_it(shared_daemon) -> None:
    """start_session with ``memroy="256M"`` (a misspelt ``memory``) is a tool error naming ``memroy``, and no session
    is started: the SDK ignored unknown arguments, so the session ran with no memory limit while the model took the
    limit as set. Every tool's input schema says ``additionalProperties: false``; right arguments still work."""
    with shared_daemon.client() as c:
        before = {s["id"] for s in c.sessions(limit=1000)}
    server = build_server(shared_daemon.home)

    async def go() -> tuple[Any, Any, Any, Any]:
        async with McpClient(server) as m:
            tools = (await m.list_tools()).tools
            typo = await m.call_tool("start_session", {"workflow": "demo.count", "params": {"n": 1},
                                                       "memroy": "256M"})
            listed = await m.call_tool("list_sessions", {"limit": 5, "statuss": ["running"]})
            good = await m.call_tool("start_session", {"workflow": "demo.count", "params": {"n": 1},
                                                       "memory": "256M"})
            return tools, typo, listed, good

    tools, typo, listed, good = anyio.run(go)
    assert typo.is_error and "memroy" in typo.content[0].text, typo.content
    assert listed.is_error and "statuss" in listed.content[0].text, listed.content
    assert all(t.input_schema.get("additionalProperties") is False for t in tools), \
        [t.name for t in tools if t.input_schema.get("additionalProperties") is not False]
    assert not good.is_error, good.content
    sid = good.structured_content["session"]
    with shared_daemon.client() as c:
        assert {s["id"] for s in c.sessions(limit=1000)} - before == {sid}  # the refused call started nothing
        assert c.session(sid)["limits"]["memory"] == 256 * 1024 * 1024
