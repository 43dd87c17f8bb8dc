"""The LLM budget, enforced in the runner before each call (the runner knows what it has spent).

With a budget ``B`` a call is refused once the session has spent ``B`` or more, so a session spends at most ``B``
plus the one call that crossed it. That holds for calls made at the same time too (agents in threads, or
``asyncio.gather``): each call counts as in flight from its admission until it is priced, reserving what it may cost
(its request's size at the model's price, or the dearest call so far if that is more), and a call waits while what
the calls in flight reserve could take the session to ``B``. The first call of a session waits for any other in
flight (no call has been priced: nothing bounds the answer's length), and a failed or replayed call says nothing of
what a call costs. Before, every call checked before those in flight were priced went through: eight agents with a
budget of two calls spent eight; and counting each at the dearest call so far let many large calls through after a
cheap first one. An answer longer than any before can still pass the bound by its excess. Worker processes forked
by the workflow have a budget each (docs/design.md, "Workflows that fork"); the daemon's backstop stops the session
once it sees the cost. A call made inside another (a checking middleware, a model that consults an agent) does not
wait at all: it could wait for a call that waits for it (its own, or another's waiting for a call of its own), so
each such call can pass the budget by one call. It is known by its context (``current_llm_call``), which
``asyncio.to_thread`` carries, and for a plain thread by the call in flight where the thread was started
(:mod:`labd.runner.agents.nesting`; until 2026-12-07 such a call waited up to :data:`ADMIT_WAIT_MAX_S`).
Calls reaching a pausing budget at once share one pause, and
the resume's budget.

``stop`` ends the workflow (``BudgetExceeded``, a BaseException, so a workflow's ``except Exception`` cannot swallow
it: the session ends ``failed`` with the figures in its reason); ``pause`` blocks the calling thread, as a pause at
a step boundary does, until the session is resumed — with a new budget (``session.resume {budget}``) or without one
(the budget is then lifted, so the resume means "go on").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Budget", "BudgetExceeded", "ADMIT_POLL_S", "ADMIT_WAIT_MAX_S"]

#: how often a call held back by the calls in flight looks again (they are LLM calls: seconds, not microseconds)
ADMIT_POLL_S = 0.01
#: the longest a call waits for the calls in flight: then it goes, and the session's log says the budget may be
#: passed by more than one call (a call waiting on one that waits on it in turn, in a way nobody foresaw, must not
#: hang the session for good)
ADMIT_WAIT_MAX_S = 300.0


class BudgetExceeded(BaseException):
    """Raised in the workflow when a stop-on-budget session reaches its budget."""


class Budget:
    """A session's budget: ``limit`` USD, ``action`` stop | pause."""

    def __init__(self, limit: float, action: str, emit: Callable[..., int],
                 pause: Callable[[str], float | None] | None = None,
                 check_stop: Callable[[], None] | None = None) -> None:
        self.limit = float(limit)
        self.action = action
        self.emit = emit
        #: blocks until resumed; returns the new budget given with the resume (None: lifted)
        self.pause = pause
        #: raises (the session's Cancelled) once a stop was asked for: a call waiting here then ends, not starts a
        #: pause of its own (after a stop, each waiting call recorded a pause before it ended, 0.25 s apart)
        self.check_stop = check_stop or (lambda: None)
        self._lock = threading.Lock()  # calls come from the workflow's threads, each on its own event loop
        self._in_flight = 0
        self._reserved = 0.0  # what the calls in flight may cost: each its estimate, at least the dearest so far
        self._dearest: float | None = None  # the most one call has cost so far (None: no call priced yet)
        #: the budget pause under way (its end), which every call reaching the budget meanwhile waits for: one pause
        #: and one resume for all of them, the resume's budget theirs too (each paused on its own, most of them
        #: read the resume's budget as lifted, and one arriving after the resume stayed paused for good)
        self._pausing: threading.Event | None = None

    @property
    def pausing(self) -> bool:
        """Whether a budget pause is under way (the calls reaching the budget wait for its resume)."""
        return self._pausing is not None

    async def check(self, spent: Callable[[], float], call: Any, estimate: float = 0.0) -> float:
        """Admit the call (it is then in flight until :meth:`priced`), refuse it (stop), or wait (pause) when the
        session has spent its budget (``spent()``: what it has spent so far); wait first while the calls in flight
        could take it there, unless the call is made inside one of them (``call.nested``: that one waits for it).
        ``estimate``: what this call may cost (from its request's size). Returns what it reserved, for
        :meth:`priced`."""
        waited = 0.0
        while True:
            now = spent()
            if now >= self.limit:
                await self._reached(now, call)
                continue
            with self._lock:
                flying, dearest = self._in_flight, self._dearest
                if (not flying or getattr(call, "nested", False) or waited >= ADMIT_WAIT_MAX_S
                        or (dearest is not None and now + self._reserved < self.limit)):
                    reserve = max(estimate, dearest or 0.0)
                    self._in_flight, self._reserved = flying + 1, self._reserved + reserve
                    break
            self.check_stop()  # a stop while it waits for the calls in flight: it ends, it does not start
            await asyncio.sleep(ADMIT_POLL_S)
            waited += ADMIT_POLL_S
        if waited >= ADMIT_WAIT_MAX_S:
            self.emit("log", {"level": "warning", "logger": "labd.budget",
                              "event": f"an LLM call by {call.agent} waited {ADMIT_WAIT_MAX_S:.0f} s for {flying} "
                                       "calls in flight and went on: the budget may be passed by more than one call"},
                      call.node)
        return reserve

    def priced(self, cost: float, *, real: bool = True, reserved: float = 0.0) -> None:
        """An admitted call ended, its ``cost`` already counted in what the session spent; ``reserved``: what
        :meth:`check` returned for it. ``real``: the model priced it (not a failure, nor an answer replayed from a
        record): only those say what a call may cost."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._reserved = max(0.0, self._reserved - reserved) if self._in_flight else 0.0
            if real and (self._dearest is None or cost > self._dearest):
                self._dearest = cost

    async def _reached(self, spent: float, call: Any) -> None:
        """The session has spent its budget: refuse the call (stop), or pause until a resume says what the budget is
        now (pause). A call reaching the budget while another call's pause is under way waits for that pause."""
        self.check_stop()  # a session being stopped records no new budget pause (nor refusal): it ends
        under_way: threading.Event | None = None
        if self.action == "pause" and self.pause is not None:
            with self._lock:
                first = self._pausing is None
                under_way = self._pausing = threading.Event() if first else self._pausing
            if not first and under_way is not None:
                # its end, then the caller looks again (after a stop, the pause it makes raises Cancelled); polled,
                # as the admission wait is: the pause is another thread's, and a cancelled caller just stops waiting
                while not under_way.is_set():
                    self.check_stop()
                    await asyncio.sleep(ADMIT_POLL_S)
                return
        reason = (f"budget reached: spent ${spent:.6f} of ${self.limit:.6f} before an LLM call by "
                  f"{call.agent} ({self.action})")
        self.emit("budget.exceeded", {"spent": spent, "budget": self.limit, "action": self.action,
                                      "agent": call.agent, "reason": reason}, call.node)
        if self.action != "pause" or self.pause is None:
            raise BudgetExceeded(reason)
        pause, done = self.pause, under_way

        def paused() -> None:
            # The whole pause, its budget and its end, on the pause's own thread: a caller cancelled meanwhile (an
            # asyncio.wait_for that gave up) stops waiting for it, but the pause goes on for the calls waiting on it
            # until the resume, whose budget then holds (it was lost, and the others started a second pause)
            try:
                new = pause(reason)
                self.limit = float("inf") if new is None else float(new)
            finally:
                with self._lock:
                    self._pausing = None
                if done is not None:
                    done.set()

        await asyncio.to_thread(paused)
