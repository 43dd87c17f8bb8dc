"""Waiting for sessions to end, in the CLI: ``labd run --wait`` / ``--follow``, ``labd resume --wait`` / ``--follow``,
``labd branch --wait``, ``labd wait SESSION...`` and ``labd logs -f``. One rule for the exit status: 0 if the
session (every session) completed, 1 otherwise, 130 on Ctrl-C (the sessions keep running), 2 on a timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from labd.frontends.cli.activity import Activity, Printer
from labd.frontends.cli.base import CliError, Ctx
from labd.frontends.cli.interrupt import ctrl_c
from labd.ipc.client import LabdError
from labd.ipc.units import UnitError, format_duration, parse_duration

__all__ = ["follow", "wait_all", "wait_for"]


def wait_for(ctx: Ctx, sid: str, as_json: bool, *, announce: bool = True, extra: dict[str, Any] | None = None) -> int:
    """``labd run --wait``: the id at once (``announce``), then nothing until the session ends; 0 if it completed, 1
    otherwise (the final status on stderr, or ``{session, status, reason}`` and ``extra`` with --json), 130 on Ctrl-C
    (the session keeps running). Also ``labd resume --wait``."""
    if not as_json and announce:
        print(sid, flush=True)
    try:
        with ctrl_c():
            row = ctx.client().wait(sid, on_event=person_notes(ctx, sid))
    except KeyboardInterrupt:
        ctx.out.line(f"\n== detached: session {sid} keeps running. Stop it with `labd stop {sid}`; "
                     f"follow it with `labd logs -f {sid}`.", "bold yellow", err=True)
        return 130
    if as_json:
        ctx.out.json({**(extra or {}), "session": sid, "status": row["status"], "reason": row.get("reason")})
    elif row["status"] != "completed":
        ctx.out.line(f"session {sid} ended {row['status']}: {row.get('reason') or ''}".rstrip(": "), "bold red",
                     err=True)
    return 0 if row["status"] == "completed" else 1


#: how long ``labd wait SESSION``, ``branch --wait``, ``logs -f`` and ``run -f`` wait for a daemon to serve again
#: after theirs stopped
RESTART_WAIT_S = 60.0


def see_restarts_through(client: Any) -> None:
    """Make ``client``'s waiting calls outlive a daemon restart: they wait up to :data:`RESTART_WAIT_S` (or
    ``$LABD_RESTART_WAIT``: a duration, e.g. ``5s``; ``0`` gives up at once) for a daemon to serve again."""
    wait = RESTART_WAIT_S
    given = os.environ.get("LABD_RESTART_WAIT", "").strip()
    if given:
        try:
            wait = 0.0 if given in ("0", "0s") else parse_duration(given)
        except UnitError as exc:
            raise CliError(f"LABD_RESTART_WAIT: {exc}") from None
    client.restart_wait = max(client.restart_wait, wait)


def wait_all(ctx: Ctx, sids: list[str], reply: dict[str, Any] | None, timeout: float | None = None) -> int:
    """Until every session of ``sids`` has ended (``labd branch --wait``, ``labd wait SESSION...``): 0 if all
    completed, 1 otherwise (each one that did not on stderr; with ``reply``, --json: the reply with each session's
    ``status`` and ``reason``), 130 on Ctrl-C; ``timeout`` seconds for them all (``LabdError`` ``timeout``)."""
    client, ended = ctx.client(), dict[str, dict[str, Any]]()
    deadline = None if timeout is None else time.monotonic() + timeout
    # a script's wait outlives a daemon restart (systemd's, an upgrade): the sessions do; not a daemon gone for good
    see_restarts_through(client)
    try:
        with ctrl_c() as pressed:
            for sid in sids:  # every reference resolved first: a typo last in the list was reported after the rest
                client.lookup(sid)  # had ended
            for sid in sids:
                try:
                    row = client.wait(sid, None if deadline is None else max(0.0, deadline - time.monotonic()),
                                      on_event=person_notes(ctx, sid))
                except LabdError as exc:
                    if exc.code == "no_daemon" and exc.details.get("session"):
                        left = sids[len(ended):]
                        raise LabdError("no_daemon", f"the labd daemon stopped while waiting, and none served again "
                                        f"within {format_duration(client.restart_wait)}; {', '.join(left)} "
                                        f"{'keeps' if len(left) == 1 else 'keep'} running (the next `labd serve` "
                                        f"adopts {'it' if len(left) == 1 else 'them'}): `labd wait "
                                        f"{' '.join(left)}` again once a daemon serves") from None
                    if exc.code != "timeout":
                        raise
                    raise LabdError("timeout", f"{len(sids) - len(ended)} of {len(sids)} sessions had not ended "
                                    f"within {format_duration(timeout)}, {sid} among them"
                                    f"{_waiting_for(client, sid)}") from None
                ended[row["id"]] = row
                pressed.check()
    except KeyboardInterrupt:
        left = sids[len(ended):]
        ctx.out.line(f"\n== detached: {', '.join(left)} keep running (`labd ps` lists them)", "bold yellow", err=True)
        return 130
    if reply is not None:
        ctx.out.json({**reply, "sessions": [{**s, "status": ended[s["session"]]["status"],
                                             "reason": ended[s["session"]].get("reason")} for s in reply["sessions"]]})
    else:
        for sid, row in ended.items():
            if row["status"] != "completed":
                ctx.out.line(f"session {sid} ended {row['status']}: {row.get('reason') or ''}".rstrip(": "),
                             "bold red", err=True)
    return 0 if all(row["status"] == "completed" for row in ended.values()) else 1


def follow(ctx: Ctx, sid: str, *, raw: bool = False, timestamps: bool = False, since: int = 0,
           header: bool = False) -> int:
    """Print a session's output and activity until it ends; 0 if it completed, 1 otherwise, 130 on Ctrl-C."""
    c = ctx.client()
    see_restarts_through(c)  # as `labd wait`: a restart (the service's) is seen through
    activity, printer = Activity(sid, raw=raw), Printer(ctx.out, timestamps=timestamps)
    if header and not raw:
        ctx.out.line(f"== session {sid} (Ctrl-C detaches; the session keeps running)", "bold", err=True)
    status = None
    try:
        with ctrl_c() as pressed:
            try:
                for ev in c.follow(sid, since=since):
                    pressed.check()  # a press whose KeyboardInterrupt a finalizer swallowed
                    for line in activity.lines(ev):
                        printer.write(line)
                    if ev["kind"] == "session.ended":
                        status = ev["payload"].get("status")
            finally:
                printer.close()  # colours the session left on end here, not in the lines below or the prompt
    except KeyboardInterrupt:
        ctx.out.line(f"\n== detached: session {sid} keeps running. Stop it with `labd stop {sid}`; "
                     f"follow it again with `labd logs -f {sid}`.", "bold yellow", err=True)
        return 130
    except LabdError as exc:
        if exc.code == "no_daemon":  # the daemon went away, not the session: say what became of it, in CLI terms
            raise LabdError("no_daemon", f"the daemon stopped while following: session {sid} keeps running (unless "
                            f"the daemon was serving with --drain) and the next `labd serve` adopts it; follow it "
                            f"again then with `labd logs -f {sid}`", exc.details) from None
        raise
    if status is None:
        status = c.session(sid)["status"]
    return 0 if status == "completed" else 1


def person_notes(ctx: Ctx, sid: str) -> Callable[[dict[str, Any]], None]:
    """What a quiet wait (``--wait``, ``labd wait``) says on stderr when the session it waits for starts waiting
    for a person (paused: by its budget, by a client; an approval): it would wait for ever, saying nothing. Events
    from before the wait began are the session's past, not news, unless the session waits for a person now."""
    began = time.time()
    now = _waiting_for(ctx.client(), sid)
    if now:
        ctx.out.line(f"== still waiting:{now}", "yellow", err=True)

    def note(ev: dict[str, Any]) -> None:
        if ev["kind"] not in ("session.paused", "approval.requested") or float(ev.get("ts") or 0) < began:
            return
        p = ev.get("payload") or {}
        if ev["kind"] == "session.paused":
            why = f" ({p['reason']})" if p.get("reason") else ""
            ctx.out.line(f"== {sid} paused{why}: `labd resume {sid}` goes on; still waiting", "yellow", err=True)
        else:
            ctx.out.line(f"== {sid} waits for an approval: `labd approvals {sid}`; still waiting", "yellow", err=True)
    return note


def _waiting_for(client: Any, sid: str) -> str:
    """What a session that has not ended is waiting for, when it is a person (it waits for ever otherwise)."""
    try:
        status = client.session(sid)["status"]
    except LabdError:
        return ""
    if status == "waiting_approval":
        return f" ({sid} waits for an approval: labd approvals {sid})"
    if status == "paused":
        return f" ({sid} is paused: labd resume {sid})"
    return ""
