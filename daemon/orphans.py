"""Runners a previous daemon forked but never recorded (it died between the fork and the commit of
``session.launched``): found by their process title, so the next daemon adopts them instead of marking the
session lost (or, for a queued session, starting it a second time)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from labd.runner.title import session_of_title

__all__ = ["find_unrecorded_runners"]


def _tagged(pid: int) -> str | None:
    try:
        return session_of_title(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return None


def find_unrecorded_runners(sids: set[str]) -> dict[str, tuple[int, float]]:
    """``{session id: (pid, create time)}`` of this user's live runner processes for ``sids``. A workflow's
    forked children carry their runner's title too: the runner is the one whose parent does not."""
    if not sids:
        return {}
    uid = os.getuid()
    tagged: dict[int, str] = {}
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != uid or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, AttributeError):
            continue
        sid = _tagged(p.pid)
        if sid in sids:
            tagged[p.pid] = sid
    found: dict[str, tuple[int, float]] = {}
    for pid, sid in tagged.items():
        try:
            proc = psutil.Process(pid)
            if tagged.get(proc.ppid()) == sid:
                continue  # a child of the runner
            found[sid] = (pid, proc.create_time())
        except psutil.Error:
            continue
    return found
