"""``labd top``: a live terminal dashboard of a daemon's sessions, built on Textual.

A client of the public protocol only (:class:`labd.ipc.Client`); see docs/design.md, "labd top".
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["run"]


def run(home: Path | None) -> int:
    """Run the dashboard for the daemon serving ``home`` until the user quits; returns the exit code."""
    from .app import TopApp  # Textual is imported only when the dashboard runs

    return TopApp(home).run() or 0
