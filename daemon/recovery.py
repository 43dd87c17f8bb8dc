"""What a starting daemon takes over from the last one: its live sessions adopted, its queued sessions queued again
in their order, and the runners it started but never recorded (found by their process title; daemon/orphans.py):
killed when the store has no trace of their session, claimed when it has one (adopted once they prove themselves).
Called once by :class:`labd.daemon.server.Daemon` at start, after the runner socket is bound and before it serves.
"""

from __future__ import annotations

from typing import Any

from labd.daemon.api.start import requeue
from labd.daemon.orphans import Claims, belongs_here, find_runners, stop_stray
from labd.daemon.spools import ran_unrecorded

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
    claims = d.supervisor.claims = Claims(d.last_seen.__contains__, lambda row: _queue_again(d, [row]),
                                          hello=d.ingest.hellos.get)
    queued_ids = {r["id"] for r in queued}
    for row in live + queued:
        if row["pid"] is None and row["id"] in runners:
            claims.add(row, runners[row["id"]], queued=row["id"] in queued_ids)
    never: list[dict[str, Any]] = []
    recovering = True

    def start_never_ran(row: dict[str, Any]) -> None:
        if recovering:
            never.append(row)
        else:  # the remote launcher answered later that it has no actor of it
            d.log.warning("a session the last daemon recorded but died before launching is started now",
                          session_id=row["id"])
            requeue(d, [row], submit=True)

    local = _placed_here(d, [r for r in live if r["pid"] is None and r["id"] not in claims])
    for row in live:
        if row["id"] not in claims:
            d.supervisor.adopt(row, never_ran=start_never_ran if _never_ran(d, row) else None,
                               remote=row["id"] not in local)
    _carry_on_stops(d, [r for r in live if r.get("stop_by") and r["id"] in d.supervisor.running])
    # sessions queued when the last daemon stopped wait again, in order
    _queue_again(d, [r for r in queued if r["id"] not in claims])
    if never:
        d.log.warning("sessions the last daemon recorded but died before queueing or launching are started now",
                      sessions=[r["id"] for r in never])
        requeue(d, never, submit=True)
    recovering = False
    claims.settle(d.supervisor.adopt)  # runners that reconnected already are adopted now
    return known


def _placed_here(d: Any, rows: list[dict[str, Any]]) -> set[str]:
    """The sessions of ``rows`` (never recorded as launched) that were to run on this machine: no remote launcher
    is asked for them (it answers later, and not at all while its cluster is down)."""
    if not rows or getattr(d.launcher, "ray", None) is None:
        return set()
    created = d.store.first_events([r["id"] for r in rows], ["session.created"])
    return {r["id"] for r in rows
            if ((created.get((r["id"], "session.created")) or {}).get("placement") or {}).get("on") != "ray"}


def _never_ran(d: Any, row: dict[str, Any]) -> bool:
    """A session stored ``created`` with no runner recorded, none found by title, and nothing in a spool: the last
    daemon died between recording it (its client told it exists) and queueing or launching it. It was recorded
    ``lost`` without ever running (crash retest); it is started now, unless a remote launcher has an actor of it
    (:meth:`Supervisor.adopt` decides)."""
    return (row["status"] == "created" and row["pid"] is None
            and not ran_unrecorded(d.layout.sessions_dir, row["id"], row.get("runner_seq") or 0))


def _queue_again(d: Any, rows: list[dict[str, Any]]) -> None:
    """Queue ``rows`` (stored ``queued``) again, but for those whose runner already ran: the last daemon launched
    it and died before storing the launch, and the runner, with no daemon to hand its events to, kept them in its
    spool and ended. Queued again, it ran a second time and its first run's record was lost (a crash review). It
    ends instead: ingest takes the spool's events first, and the run's own outcome decides its status."""
    ran = [r for r in rows if ran_unrecorded(d.layout.sessions_dir, r["id"], r.get("runner_seq") or 0)]
    for row in ran:
        d.log.warning("a queued session's runner ran while no daemon watched it, and is gone: its record is taken "
                      "from its spool, not run again", session_id=row["id"])
        d.supervisor.post(row["id"], "session.ended", {"ended_by": "vanished",
                                                      "lost_reason": "its runner ran while no daemon watched it and "
                                                                     "ended without reporting an outcome"})
    requeue(d, [r for r in rows if r not in ran])


def _carry_on_stops(d: Any, rows: list[dict[str, Any]]) -> None:
    """Adopted sessions the last daemon was stopping: the stop goes on (its grace counted from when it was asked)."""
    asked = d.store.last_events([r["id"] for r in rows], ["session.stopping"]) if rows else {}
    for row in rows:
        at = asked.get((row["id"], "session.stopping"))
        if at is not None:
            d.supervisor.carry_on_stop(row["id"], at[1], at[0], d.cfg.stop_grace)
