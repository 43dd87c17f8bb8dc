"""A tiny stdio MCP server for tests: one tool, ``add``, and a record of every call in a side file."""

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("adder")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    with open(os.environ["ADDER_LOG"], "a") as f:
        f.write(f"{a}+{b}\n")
    return a + b


if __name__ == "__main__":
    sys.exit(server.run("stdio"))
