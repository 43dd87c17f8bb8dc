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


#: the DAG tab shows the newest this many nodes of the followed session (a tree of many thousands is slow to
#: rebuild every second, and a days-long session's whole graph is ~12 MB a read)
DAG_NODES = 1000


class DagUpdated(Message):
    """The followed session's newest :data:`DAG_NODES` nodes (``session.dag`` json, with ``nodes_omitted``: how
    many older ones it left out) and their files."""

    def __init__(self, session: str, dag: dict[str, Any], files: list[dict[str, Any]]) -> None:
        super().__init__()
        self.session, self.dag, self.files = session, dag, files


class ConnectionChanged(Message):
    """The daemon became reachable (``connected``) or stopped answering (``detail`` says why)."""

    def __init__(self, connected: bool, detail: str = "") -> None:
        super().__init__()
        self.connected, self.detail = connected, detail
