"""A runner's process title: what ps/htop show, and how a restarted daemon finds a runner it never recorded
(the previous daemon died between the fork and the commit of ``session.launched``: daemon/orphans.py)."""

from __future__ import annotations

import re

__all__ = ["TITLE_MAX", "runner_title", "session_of_title"]

TITLE_MAX = 200  # what setproctitle gets; the session id at its end always fits
_TAG = re.compile(rb"^labd: .* #([0-9a-f]{6,64})$")


def runner_title(name: str, workflow: str, sid: str) -> str:
    """``labd: study-1 (mypkg.flows:study) #a1b2c3d4e5f6``: readable, with the session id last (never cut)."""
    tag = f" #{sid}"
    return f"labd: {name} ({workflow})"[:TITLE_MAX - len(tag)] + tag


def session_of_title(cmdline: bytes) -> str | None:
    """The session id in a runner's title, as read from ``/proc/<pid>/cmdline``; None for any other process."""
    m = _TAG.match(cmdline.rstrip(b"\0 ").replace(b"\0", b" "))
    return m.group(1).decode() if m else None
