"""Pause and cancellation of a running workflow: the part of the workflow's context that the daemon's control
messages drive (``pause``, ``resume``, ``stop``) and that the workflow's own code checks at its boundaries.

:class:`Interruptible` is a base of :class:`labd.runner.context.Context`; the methods here are the context's
public API (``ctx.cancelled``, ``ctx.check_cancelled()``, ``ctx.sleep()``, ...), kept in their own module so
the context's module stays about steps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Cancelled", "Interruptible"]

#: how often a paused workflow looks for a stop (seconds)
PAUSE_POLL_S = 0.25


class Cancelled(BaseException):
    """Raised inside the workflow when the session is asked to stop (at a step boundary or by SIGTERM).

    A BaseException, like KeyboardInterrupt, so a workflow's ``except Exception`` does not swallow it.
    """


class Interruptible:
    """Pause (at the next step boundary, or where the workflow waits: :meth:`wait_paused`) and cancellation."""

    _emit: Callable[..., int]

    def _init_interrupts(self) -> None:
        self._cancel = threading.Event()
        self.cancel_reason = ""
        self._pause: tuple[str, str] | None = None
        self._resume = threading.Event()
        self._resumed_by = "client"
        self._resume_budget: float | None = None

    def _here(self) -> str | None:
        """The node the calling code is in (events are attributed to it)."""
        raise NotImplementedError

    def request_pause(self, by: str, reason: str) -> None:
        self._resume.clear()
        self._pause = (by, reason)

    def resume(self, by: str = "client", budget: float | None = None) -> None:
        """Continue a paused session; ``budget`` (USD) replaces a budget that paused it."""
        self._resumed_by = by
        self._resume_budget = float(budget) if isinstance(budget, int | float) and not isinstance(budget, bool) \
            else None
        self._pause = None
        self._resume.set()

    def wait_paused(self, by: str, reason: str) -> float | None:
        """Pause here (not at a step boundary: e.g. before an LLM call the budget refuses) until resumed;
        returns the new budget the resume gave, if any. Raises :class:`Cancelled` on a stop meanwhile."""
        self._resume.clear()
        self._resume_budget = None
        self._emit("session.paused", {"by": by, "reason": reason}, self._here())
        while not self._resume.wait(PAUSE_POLL_S):
            self.check_cancelled()
        self.check_cancelled()
        resumed: dict[str, Any] = {"by": self._resumed_by}
        if self._resume_budget is not None:
            resumed["budget"] = self._resume_budget
        else:  # the budget that paused it is lifted (labd.runner.agents.budget)
            resumed["budget_lifted"] = True
        self._emit("session.resumed", resumed, self._here())
        return self._resume_budget

    def _new_budget(self, budget: float | None) -> bool:
        """Give the session's LLM budget a new limit (None: lifted); False if it has no budget to change."""
        return False

    def _maybe_pause(self) -> None:
        pause = self._pause
        if pause is None:
            return
        by, reason = pause
        self._emit("session.paused", {"by": by, "reason": reason}, self._here())
        while not self._resume.wait(PAUSE_POLL_S):
            self.check_cancelled()
        self.check_cancelled()
        resumed: dict[str, Any] = {"by": self._resumed_by}
        budget = self._resume_budget
        # A budget given with the resume is the session's budget from now on; a pause the daemon asked for because
        # the budget was crossed ("limit") is a budget pause, like the runner's own (wait_paused): a resume without
        # a budget lifts it. Before, both were dropped here and the next LLM call paused again on the old budget.
        if (budget is not None or by == "limit") and self._new_budget(budget):
            if budget is not None:
                resumed["budget"] = budget
            else:
                resumed["budget_lifted"] = True
        self._emit("session.resumed", resumed, self._here())

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if a stop was requested."""
        if self._cancel.is_set():
            raise Cancelled(self.cancel_reason or "cancelled")

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up and raise :class:`Cancelled` as soon as a stop is requested."""
        if self._cancel.wait(seconds):
            raise Cancelled(self.cancel_reason or "cancelled")

    def request_cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self._cancel.set()
        self._resume.set()
