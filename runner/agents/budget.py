"""The LLM budget, enforced in the runner before each call (the runner knows what it has spent).

With a budget ``B`` a call is refused once the session has spent ``B`` or more, so a session spends at
most ``B`` plus the one call that crossed it. ``stop`` ends the workflow (``BudgetExceeded``, a
a BaseException,
so a workflow's ``except Exception`` cannot swallow it: the session ends ``failed`` with the figures in its
reason); ``pause`` blocks the
calling thread, as a pause at a step boundary does, until the session is resumed — with a new budget
(``session.resume {budget}``) or without one (the budget is then lifted, so the resume means "go on").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Budget", "BudgetExceeded"]


class BudgetExceeded(BaseException):
    """Raised in the workflow when a stop-on-budget session reaches its budget."""


class Budget:
    """A session's budget: ``limit`` USD, ``action`` stop | pause."""

    def __init__(self, limit: float, action: str, emit: Callable[..., int],
                 pause: Callable[[str], float | None] | None = None) -> None:
        self.limit = float(limit)
        self.action = action
        self.emit = emit
        #: blocks until resumed; returns the new budget given with the resume (None: lifted)
        self.pause = pause

    async def check(self, spent: float, call: Any) -> None:
        """Refuse (stop) or wait (pause) when ``spent`` has reached the limit."""
        while spent >= self.limit:
            reason = (f"budget reached: spent ${spent:.6f} of ${self.limit:.6f} before an LLM call by "
                      f"{call.agent} ({self.action})")
            self.emit("budget.exceeded", {"spent": spent, "budget": self.limit, "action": self.action,
                                          "agent": call.agent, "reason": reason}, call.node)
            if self.action != "pause" or self.pause is None:
                raise BudgetExceeded(reason)
            new = await asyncio.to_thread(self.pause, reason)
            if new is None:
                self.limit = float("inf")
            else:
                self.limit = float(new)
