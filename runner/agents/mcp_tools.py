"""MCP servers for agents: ``ctx.agent(..., mcp=["name"])`` gives an agent the tools of configured servers.

Servers are configured by the user in ``[mcp.servers.<name>]`` (``command`` + ``args`` for a local stdio
server, or ``url`` for a streamable-HTTP one) and reach the runner in its start spec. The tools come from
ag2's own ``MCPToolkit``, so to the agent — and to labd's tracking middleware — they are ordinary tools:
every call is recorded as ``tool.call`` / ``tool.result`` like any other.

A server's environment is only what its config names (``env``): secrets withheld from the session are not
passed on implicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["McpConfigError", "toolkits_for"]


class McpConfigError(Exception):
    """An agent asked for an MCP server that is not configured, or its configuration is unusable."""


def toolkits_for(names: Iterable[str], servers: Mapping[str, Mapping[str, Any]], workdir: str) -> list[Any]:
    """ag2 ``MCPToolkit`` objects for the named servers (tool names prefixed ``<server>_`` to avoid clashes)."""
    names = list(names)
    if not names:
        return []
    from ag2.tools.toolkits.mcp_server import MCPServerConfig, MCPStdioServerConfig, MCPToolkit

    out = []
    for name in names:
        entry = servers.get(name)
        if entry is None:
            raise McpConfigError(f"unknown MCP server {name!r}; configured: {', '.join(sorted(servers)) or 'none'} "
                                 "(add [mcp.servers.<name>] to config.toml)")
        if entry.get("url"):
            config: Any = MCPServerConfig(server_url=str(entry["url"]), tool_name_prefix=f"{name}_")
        else:
            env = {"PATH": os.environ.get("PATH", ""), **{str(k): str(v) for k, v in (entry.get("env") or {}).items()}}
            config = MCPStdioServerConfig(command=str(entry["command"]), args=[str(a) for a in entry.get("args", [])],
                                          env=env, cwd=str(entry.get("cwd") or workdir), tool_name_prefix=f"{name}_")
        out.append(MCPToolkit(config))
    return out
