"""What a starting daemon takes over from the last one: its live sessions adopted, its queued sessions queued again
in their order, and the runners it started but never recorded (found by their process title; daemon/orphans.py):
killed when the store has no trace of their session, claimed when it has one (adopted once they prove themselves).
Called once by :class:`labd.daemon.server.Daemon` at start, after the runner socket is bound and before it serves.
"""

from __future__ import annotations

from typing import Any

from labd.daemon.api.start import requeue
from labd.daemon.orphans import Claims, belongs_here, find_runners, stop_stray

__all__ = ["recover"]


def recover(d: Any) -> set[str]:
    """Take over what the last daemon left: its live sessions adopted, its queued ones queued again in order,
    runners it started but died before recording stopped (unknown sessions) or claimed (daemon/orphans.py:
    adopted once they prove themselves). Returns the id of every stored session."""
    live = d.store.live_sessions()
    queued = d.store.sessions(status=["queued"], limit=100_000)
    known = d.store.session_ids()
    # runners the last daemon started but died before recording (found by their process title)
    runners = find_runners()
    for sid, found in runners.items():
        for pid, ctime in found if sid not in known else ():
            if belongs_here(pid, d.layout.sessions_dir / sid) and stop_stray(pid, ctime):
                d.log.warning("killed the runner of a session never recorded (the last daemon died starting it; "
                              "its client got no reply)", session_id=sid, pid=pid)
    # A session never recorded as launched (pid None; 0 is a remote runner's) whose runner was found by title
    # waits for that runner to prove itself (a frame signed with the session's key): a title is no proof.
    claims = d.supervisor.claims = Claims(d.last_seen.__contains__, lambda row: requeue(d, [row]),
                                          hello=d.ingest.hellos.get)
    queued_ids = {r["id"] for r in queued}
    for row in live + queued:
        if row["pid"] is None and row["id"] in runners:
            claims.add(row, runners[row["id"]], queued=row["id"] in queued_ids)
    for row in live:
        if row["id"] not in claims:
            d.supervisor.adopt(row)
    # sessions queued when the last daemon stopped wait again, in order
    requeue(d, [r for r in queued if r["id"] not in claims])
    claims.settle(d.supervisor.adopt)  # runners that reconnected already are adopted now
    return known
