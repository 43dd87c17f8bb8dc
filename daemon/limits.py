"""A session's limits: memory, CPU, wall time, LLM budget, process count and kept output.

Plain data, recorded with the session (``session.created``) and read back on restart, requeue and resume.
Who enforces what: the monitor (:mod:`labd.daemon.monitor`) memory, CPU and process count; the supervisor wall
time and the budget (from ingest's cost notes); ingest and the runner the output cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labd.ipc.limits import MAX_PROCS

__all__ = ["Limits", "MAX_PROCS"]


@dataclass(frozen=True)
class Limits:
    """Per-session limits; None means unlimited."""

    memory: int | None = None  # bytes, PSS of the whole tree
    cpu: float | None = None  # percent of one core
    timeout: float | None = None  # wall seconds since start
    budget: float | None = None  # USD of LLM usage (enforced from cost events by ingest + supervisor)
    budget_action: str = "stop"  # stop | pause
    procs: int | None = None  # processes in the tree (zombies included)
    output: int | None = None  # bytes of captured stdout+stderr kept (runner/capture.py, daemon/outputcap.py)

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "cpu": self.cpu, "timeout": self.timeout, "budget": self.budget,
                "budget_action": self.budget_action, "procs": self.procs, "output": self.output}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limits:
        return cls(memory=d.get("memory"), cpu=d.get("cpu"), timeout=d.get("timeout"), budget=d.get("budget"),
                   budget_action=d.get("budget_action") or "stop", procs=d.get("procs"),
                   output=d.get("output"))

    @property
    def strict(self) -> bool:
        """Limits that need the fast sampling period: memory (a breach is killed within ~0.1 s). A process-count
        limit does not: every session has one by default, and the fast period for all of them would cost the
        daemon a pass over /proc ten times a second; a session past half its ``procs`` gets it (``procs_near``)."""
        return self.memory is not None
