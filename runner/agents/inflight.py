"""LLM calls in flight, as the session's policy sees them: what each agent's calls may still cost.

A rule that depends on what was spent (a ``cap``, ``min_agent_cost``, ``min_session_cost``: :mod:`labd.ipc.policy`)
is decided on the costs priced so far. Calls made at the same time (agents in threads, ``asyncio.gather``) were each
decided before any of them was priced, so eight agents under a cap of two calls spent eight. Now an LLM call whose
decision the calls in flight could change once priced waits for them (:meth:`labd.runner.agents.policy.PolicyGate.
check_llm`), as a budget's call does (:mod:`labd.runner.agents.budget`): each call in flight reserves what it may cost
(its request's size at the model's price and the longest answer so far, at least the dearest call so far), and a call
is decided and reserved in one step under this module's lock, reading the calls in flight before the costs, so two
threads never both pass on the same figures. Before any call was priced nothing bounds an answer: an agent's calls
in flight may take it (and the session) anywhere. A call made inside another one does not wait (it could wait for a
call that waits for it), nor does one that waited :data:`~labd.runner.agents.budget.ADMIT_WAIT_MAX_S` (the time a
budget pause holds the calls in flight not counted: review helper-157 found calls decided at once during a pause went
through the cap together after the resume). Tool calls and code runs are decided on the costs priced so far: they spend
nothing themselves. Like the budget, a cap can still be passed by the excess of an answer longer than any before.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

__all__ = ["CallsInFlight"]

INF = float("inf")


class CallsInFlight:
    """Per agent: how many of its LLM calls are in flight and what they may cost (thread-safe: calls come from the
    workflow's threads, each on its own event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str | None, int] = {}
        self._reserved: dict[str | None, float] = {}
        self._dearest: float | None = None  # the most a call priced by the model has cost (None: none priced yet)

    def _pending(self, agent: str | None) -> tuple[float, float] | None:
        """(what ``agent``'s calls in flight may cost, what all calls in flight may cost), None when none is in
        flight; before any call was priced, ``inf`` for each that has calls in flight. Lock held."""
        if not self._count:
            return None
        if self._dearest is None:
            return (INF if agent in self._count else 0.0), INF
        return self._reserved.get(agent, 0.0), sum(self._reserved.values())

    def pending(self, agent: str | None) -> tuple[float, float] | None:
        """:meth:`_pending`, for a look from outside."""
        with self._lock:
            return self._pending(agent)

    def admit(self, agent: str | None, decide: Callable[[tuple[float, float] | None], bool | None],
              estimate: float) -> float | None:
        """``decide(pending)`` under the lock (it reads the costs: after the calls in flight, so a call priced
        meanwhile is seen in one or the other, never in neither); when it says True, a call of ``agent`` is in flight
        from now on: returns what it reserves (``estimate``, at least the dearest call so far; a non-finite or
        negative estimate counts as 0). Else None, nothing reserved."""
        with self._lock:
            if not decide(self._pending(agent)):
                return None
            reserve = max(estimate if math.isfinite(estimate) and estimate > 0 else 0.0, self._dearest or 0.0)
            self._count[agent] = self._count.get(agent, 0) + 1
            self._reserved[agent] = self._reserved.get(agent, 0.0) + reserve
            return reserve

    def priced(self, agent: str | None, reserve: float, cost: float = 0.0, *, real: bool) -> None:
        """An admitted call ended, its ``cost`` already counted in what was spent (``reserve``: what :meth:`admit`
        returned). ``real``: the model priced it (not a failure, nor a replayed answer): it says what a call may
        cost."""
        with self._lock:
            left = self._count.get(agent, 0) - 1
            if left > 0:
                self._count[agent] = left
                self._reserved[agent] = max(0.0, self._reserved.get(agent, 0.0) - reserve)
            else:
                self._count.pop(agent, None)
                self._reserved.pop(agent, None)
            if real and math.isfinite(cost) and (self._dearest is None or cost > self._dearest):
                self._dearest = max(0.0, cost)
