"""The dashboard's accept errors, reported at most once a minute.

When the process runs out of descriptors (a local user holding thousands of connections open, each waiting up to
:data:`~labd.frontends.ui.deadline.HEADERS_S` for its headers), asyncio's accept loop reports every failed
``accept()`` with a full traceback: an attack review measured 80,276 of them, 32.5 MB of the dashboard's stderr, in
about ten seconds. The condition is worth one line saying what and how often, not a traceback per attempt: this
handler prints that line at most once per :data:`EVERY_S` and passes every other exception to asyncio's own handler.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

__all__ = ["EVERY_S", "quiet_accept_errors"]

EVERY_S = 60.0
_ACCEPT = "socket.accept() out of system resource"  # asyncio's message (selector_events._accept_connection)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, every: float = EVERY_S) -> None:
    """Make ``loop`` report accept errors for lack of resources in one line per ``every`` seconds (with how many
    there were since the last line); anything else goes to the handler the loop had."""
    previous = loop.get_exception_handler()
    state = {"last": -every, "count": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        state["count"] += 1
        now = time.monotonic()
        if now - state["last"] < every:
            return
        exc = context.get("exception")
        print(f"labd ui: cannot accept connections ({exc}): {state['count']} refused since the last report (at most "
              f"one report a minute); the dashboard is short of descriptors, likely many connections held open",
              file=sys.stderr, flush=True)
        state["last"], state["count"] = now, 0

    loop.set_exception_handler(handler)
