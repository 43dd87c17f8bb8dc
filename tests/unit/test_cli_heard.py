"""``labd show``'s "last heard from" line for a live session's runner."""

from __future__ import annotations

from labd.frontends.cli.listing import QUIET_S, heard_text


def test_an_idle_runner_between_heartbeats_is_not_called_unresponsive() -> None:
    """A sleeping, paused or waiting session's runner is heard from at its 30 s heartbeat: 11 s or 29 s of quiet is
    no alarm (it was shown in red as "unresponsive?" after 10 s); past two and a half heartbeats it is."""
    now = 10_000.0
    for status in ("running", "paused", "waiting_approval"):
        for quiet in (11.0, 29.0, 45.0):
            text = heard_text({"status": status, "last_seen": now - quiet}, now)
            assert text == f"last heard from {quiet:.1f}s ago", (status, quiet, text)
    late = heard_text({"status": "running", "last_seen": now - QUIET_S - 1}, now)
    assert late == (f"last heard from {QUIET_S + 1:.1f}s ago  (unresponsive?)", "red")
    assert heard_text({"status": "completed", "last_seen": now - 500}, now) is None
