"""The LLM budget, enforced in the runner before each call (the runner knows what it has spent).

With a budget ``B`` a call is refused once the session has spent ``B`` or more, so a session spends at
most ``B`` plus the one call that crossed it. That holds for calls made at the same time too (agents in threads, or
``asyncio.gather``): each call counts as in flight from its admission until it is priced, and a call waits while the
calls in flight could, costing what the dearest call so far cost, take the session to ``B`` (the first call of a
session waits for any other in flight: nothing is known of a call's price before one is priced). Before, every call
checked before those in flight were priced went through: eight agents with a budget of two calls spent eight.

``stop`` ends the workflow (``BudgetExceeded``, a BaseException, so a workflow's ``except Exception`` cannot swallow
it: the session ends ``failed`` with the figures in its reason); ``pause`` blocks the calling thread, as a pause at a
step boundary does, until the session is resumed — with a new budget (``session.resume {budget}``) or without one
(the budget is then lifted, so the resume means "go on").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Budget", "BudgetExceeded", "ADMIT_POLL_S"]

#: how often a call held back by the calls in flight looks again (they are LLM calls: seconds, not microseconds)
ADMIT_POLL_S = 0.01


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
        self._lock = threading.Lock()  # calls come from the workflow's threads, each on its own event loop
        self._in_flight = 0
        self._dearest: float | None = None  # the most one call has cost so far (None: no call priced yet)

    async def check(self, spent: Callable[[], float], call: Any) -> None:
        """Admit the call (it is then in flight until :meth:`priced`), refuse it (stop), or wait (pause) when the
        session has spent its budget (``spent()``: what it has spent so far); wait first while the calls in flight
        could take it there."""
        while True:
            now = spent()
            if now >= self.limit:
                await self._reached(now, call)
                continue
            with self._lock:
                flying, dearest = self._in_flight, self._dearest
                if not flying or (dearest is not None and now + flying * dearest < self.limit):
                    self._in_flight = flying + 1
                    return
            await asyncio.sleep(ADMIT_POLL_S)

    def priced(self, cost: float) -> None:
        """An admitted call ended, its ``cost`` already counted in what the session spent (0 for one that failed)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            if self._dearest is None or cost > self._dearest:
                self._dearest = cost

    async def _reached(self, spent: float, call: Any) -> None:
        reason = (f"budget reached: spent ${spent:.6f} of ${self.limit:.6f} before an LLM call by "
                  f"{call.agent} ({self.action})")
        self.emit("budget.exceeded", {"spent": spent, "budget": self.limit, "action": self.action,
                                      "agent": call.agent, "reason": reason}, call.node)
        if self.action != "pause" or self.pause is None:
            raise BudgetExceeded(reason)
        new = await asyncio.to_thread(self.pause, reason)
        self.limit = float("inf") if new is None else float(new)
