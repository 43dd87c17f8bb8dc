"""Front-ends with their own screen or peer: `labd top` (terminal), `labd ui` (browser), `labd mcp` (MCP, stdio)."""

from __future__ import annotations

import argparse

from labd.frontends.cli.base import CliError, Ctx, command

__all__ = ["register"]


def cmd_ui(args: argparse.Namespace, ctx: Ctx) -> int:
    from labd.frontends import ui  # imported here: other commands stay fast

    return ui.run(ctx.home, port=args.port, open_browser=args.open)


def cmd_top(args: argparse.Namespace, ctx: Ctx) -> int:
    import sys
    from pathlib import Path

    if not (sys.stdin.isatty() and sys.stdout.isatty()):  # a full-screen UI in a pipe: escape codes, no way to quit
        raise CliError("top needs a terminal (it is a full-screen dashboard); in scripts use `labd ps --json` "
                       "or `labd status --json`")

    from labd.frontends.top import run as run_top

    return run_top(Path(ctx.home) if ctx.home else None)


def cmd_mcp(args: argparse.Namespace, ctx: Ctx) -> int:
    from labd.frontends import mcp

    return mcp.run(ctx.home, allow_policy_approvals=args.allow_policy_approvals, workflows=args.workflow)


def _port(text: str) -> int:
    """``ui --port``: 0-65535 (0: a free one), said in the option's terms rather than as bind()'s traceback."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, not {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(sub, "top", cmd_top, "live dashboard: sessions, output, DAG, approvals (q quits, ? for keys)")
    s = command(sub, "ui", cmd_ui, "the web dashboard on 127.0.0.1 (prints its URL with a token)")
    s.add_argument("--port", type=_port, default=0, help="port to listen on (default: a free one)")
    s.add_argument("--open", action="store_true", help="open it in the browser")
    s = command(sub, "mcp", cmd_mcp, "serve MCP over stdio (for Claude Desktop, Cursor, VS Code ...)",
                epilog="hook it into an MCP client (Claude Desktop's claude_desktop_config.json; others alike):\n"
                '  {"mcpServers": {"labd": {"command": "/path/to/.venv/bin/labd", "args": ["mcp"]}}}\n'
                "The client starts `labd mcp` with its own environment: a daemon with another home than the default\n"
                'needs "args": ["mcp", "--home", "/its/home"] (or "env": {"LABD_HOME": "/its/home"}); a daemon on\n'
                'another machine, "args": ["mcp", "--connect", "/path/to/laptop.labd.json"].')
    s.add_argument("--workflow", action="append", default=[], metavar="PATTERN",
                   help="also let the MCP client start workflows matching PATTERN (fnmatch: 'mypkg.flows:*', "
                        "'/srv/flows/*.py:*'; '*' for any); by default it may start the built-ins only, since a "
                        "workflow is code that runs as you (repeatable)")
    s.add_argument("--allow-policy-approvals", action="store_true",
                   help="let the MCP client answer approvals that a [[policy]] rule requires (default: refused, "
                        "since the client is a model and those rules ask for a human)")
