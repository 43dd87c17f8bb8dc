"""Workflow checks that never stall the daemon.

A user's workflow (``mypkg.flows:study``) is resolved and its params bound by importing it, which only ever
happens in a throwaway child of the runner template (never in the daemon). Importing can take seconds (a
module that pulls in a large library) or hang. A request handler that needs such a check is a generator: it
``yield``\\ s a :class:`Check` (``check = yield from daemon.check_workflow(...)``), the control plane hands it
to :class:`Checks` and goes on serving other clients; when the template answers, the handler resumes where it
stopped and its reply is sent as usual.

Bounded: at most :data:`MAX_RUNNING` checks at the template at once (each is a forked child importing
code), at most :data:`MAX_WAITING` more waiting in arrival order; past that a request is refused with
``busy`` at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from labd.daemon.api.base import ApiError

__all__ = ["Check", "Checks", "CheckFlow", "MAX_RUNNING", "MAX_WAITING"]

MAX_RUNNING = 4  # import children at the template at once
MAX_WAITING = 1000  # checks queued behind them (each a suspended request: a few KiB)


@dataclass(frozen=True)
class Check:
    """What a suspended handler waits for: ``workflow`` resolved with ``path`` first on ``sys.path`` and
    ``params`` bound; it is resumed with the template's answer ``{"ok": bool, ...}``."""

    workflow: str
    params: dict[str, Any]
    path: list[str] | None


#: a request handler that waits for checks: yields Check, is sent the answer, returns its reply result
CheckFlow = Generator[Check, dict[str, Any], Any]
#: called with (flow, value to send in): runs the flow to its next Check or to its end, and replies
Resume = Callable[[CheckFlow, Any, Any], Check | None]


class Checks:
    """The checks in flight at the launcher and those waiting for a slot."""

    def __init__(self, start: Callable[[Check], int]) -> None:
        self._start = start  # launcher.inspect_start
        self._running: dict[int, tuple[CheckFlow, Any]] = {}  # launcher request id -> (flow, its reply context)
        self._waiting: deque[tuple[Check, CheckFlow, Any]] = deque()

    def __len__(self) -> int:
        return len(self._running) + len(self._waiting)

    def submit(self, check: Check, flow: CheckFlow, context: Any) -> None:
        """Run ``check`` for ``flow`` now or when a slot frees; raise ``busy`` when too many wait."""
        if len(self._running) < MAX_RUNNING:
            self._running[self._start(check)] = (flow, context)
        elif len(self._waiting) < MAX_WAITING:
            self._waiting.append((check, flow, context))
        else:
            raise ApiError("busy", f"{MAX_WAITING} workflow checks are already waiting to import their workflows; "
                           "retry later", {"waiting": MAX_WAITING})

    def answered(self, answers: list[tuple[int, dict[str, Any]]], resume: Resume) -> None:
        """Resume the flows whose checks were answered (``resume`` returns the flow's next check, if any),
        then start waiting checks in the freed slots."""
        for req, answer in answers:
            entry = self._running.pop(req, None)
            if entry is None:
                continue
            flow, context = entry
            nxt = resume(flow, answer, context)
            if nxt is not None:
                self._waiting.appendleft((nxt, flow, context))  # a flow's second check goes first
        while self._waiting and len(self._running) < MAX_RUNNING:
            check, flow, context = self._waiting.popleft()
            self._running[self._start(check)] = (flow, context)

    def close(self) -> None:
        """Drop every suspended request (the daemon is stopping; their clients get no reply)."""
        for flow, _ in self._running.values():
            flow.close()
        for _, flow, _ in self._waiting:
            flow.close()
        self._running.clear()
        self._waiting.clear()
