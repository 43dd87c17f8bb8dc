"""LLM calls in flight, as the session's policy sees them: what each agent's calls may still cost.

A rule that depends on what was spent (a ``cap``, ``min_agent_cost``, ``min_session_cost``: :mod:`labd.ipc.policy`)
is decided on the costs priced so far. Calls made at the same time (agents in threads, ``asyncio.gather``) were each
decided before any of them was priced, so eight agents under a cap of two calls spent eight. Now an LLM call whose
decision the calls in flight could change once priced waits for them (:meth:`labd.runner.agents.policy.PolicyGate.
check_llm`), as a budget's call does (:mod:`labd.runner.agents.budget`): each call in flight reserves what it may cost
(its request's size at the model's price, the longest answer so far), and before any call was priced nothing bounds
an answer, so any call in flight could. A call made inside another one does not wait (it could wait for a call that
waits for it), nor does one that waited :data:`~labd.runner.agents.budget.ADMIT_WAIT_MAX_S`. Tool calls and code
runs are decided on the costs priced so far: they spend nothing themselves.
"""

from __future__ import annotations

import threading

__all__ = ["CallsInFlight"]


class CallsInFlight:
    """Per agent: how many of its LLM calls are in flight and what they may cost (thread-safe: calls come from the
    workflow's threads, each on its own event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str | None, int] = {}
        self._reserved: dict[str | None, float] = {}
        self._priced = False  # some call was priced by the model: answers are bounded by what was seen

    def pending(self, agent: str | None) -> tuple[float, float] | None:
        """(what ``agent``'s calls in flight may cost, what all calls in flight may cost), ``inf`` for both while no
        call was priced yet; None when no call is in flight."""
        with self._lock:
            if not self._count:
                return None
            if not self._priced:
                return float("inf"), float("inf")
            return self._reserved.get(agent, 0.0), sum(self._reserved.values())

    def admitted(self, agent: str | None, reserve: float) -> None:
        """An LLM call of ``agent`` is in flight from now on, possibly costing ``reserve``."""
        with self._lock:
            self._count[agent] = self._count.get(agent, 0) + 1
            self._reserved[agent] = self._reserved.get(agent, 0.0) + reserve

    def priced(self, agent: str | None, reserve: float, *, real: bool) -> None:
        """An admitted call ended, its cost already counted in what was spent (``reserve``: what it reserved).
        ``real``: the model priced it (not a failure, nor a replayed answer)."""
        with self._lock:
            left = self._count.get(agent, 0) - 1
            if left > 0:
                self._count[agent] = left
                self._reserved[agent] = max(0.0, self._reserved.get(agent, 0.0) - reserve)
            else:
                self._count.pop(agent, None)
                self._reserved.pop(agent, None)
            self._priced = self._priced or real
