"""The typed messages the data feed posts to the app: the only way daemon data reaches the widgets."""

from __future__ import annotations

from typing import Any

from textual.message import Message

__all__ = ["ConnectionChanged", "DagUpdated", "EventsArrived", "SessionsUpdated"]


class SessionsUpdated(Message):
    """A fresh ``session.list`` (with live CPU / memory) and the pending approvals across sessions."""

    def __init__(self, sessions: list[dict[str, Any]], approvals: list[dict[str, Any]], at: float) -> None:
        super().__init__()
        self.sessions, self.approvals, self.at = sessions, approvals, at


class EventsArrived(Message):
    """A batch of the followed session's events, each ``seq`` exactly once and in order.

    ``skipped`` counts events before the first one that were not loaded (a long history starts at its tail).
    """

    def __init__(self, session: str, events: list[dict[str, Any]], skipped: int = 0) -> None:
        super().__init__()
        self.session, self.events, self.skipped = session, events, skipped


class DagUpdated(Message):
    """The followed session's DAG (``session.dag`` json), cost per node and files."""

    def __init__(self, session: str, dag: dict[str, Any], cost_by_node: dict[str, float],
                 files: list[dict[str, Any]]) -> None:
        super().__init__()
        self.session, self.dag, self.cost_by_node, self.files = session, dag, cost_by_node, files


class ConnectionChanged(Message):
    """The daemon became reachable (``connected``) or stopped answering (``detail`` says why)."""

    def __init__(self, connected: bool, detail: str = "") -> None:
        super().__init__()
        self.connected, self.detail = connected, detail
