"""Acting on running sessions: ``labd stop``, ``kill``, ``pause`` and ``resume`` (of a paused session), one session
or many (ids, names, ``--tag``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from labd.frontends.cli.base import LIVE, CliError, Ctx, add_json, command
from labd.frontends.cli.sessions import parse_tags
from labd.ipc import LabdError
from labd.ipc.units import UnitError, parse_duration

__all__ = ["register", "dequeued", "parse_grace"]


def _reply(ctx: Ctx, args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    if getattr(args, "json", False):
        ctx.out.json(result)
    else:
        print(ctx.out.safe(text))
    return 0


def _targets(args: argparse.Namespace, ctx: Ctx) -> list[str]:
    """The sessions ``labd stop`` / ``labd kill`` act on: those named, and (``--tag``) every live session with those
    tags. Acting on a batch took a shell loop of one command per session (power-user review)."""
    refs = list(args.session)
    if args.tag:
        live = ctx.client().iter_sessions(status=list(LIVE), tags=parse_tags(args.tag))  # all, not the newest 10,000
        refs += [r["id"] for r in live if r["id"] not in refs]
        if not refs:
            ctx.out.line("no live session has those tags", "dim", err=True)
    elif not refs:
        raise CliError(f"name the sessions to {args.cmd} (ids or names), or select them with --tag K=V")
    return refs


def _each(args: argparse.Namespace, ctx: Ctx, refs: list[str], act: Callable[[str], tuple[dict[str, Any], str]]
          ) -> int:
    """Act on each of several sessions, one line (or one JSON reply) each; a session that has ended already is said
    and counts as done (a list that changes under a script must not fail it); exit 1 if any other failed."""
    replies: list[dict[str, Any]] = []
    failed = False
    for ref in refs:
        try:
            r, said = act(ref)
        except LabdError as exc:
            r = {"session": ref, "error": exc.code, "message": exc.message}
            if exc.code != "not_running":
                failed = True
                replies.append(r)
                if not args.json:
                    print(ctx.out.safe(f"labd: {ref}: {exc.message} [{exc.code}]", err=True), file=sys.stderr)
                continue
            said = f"{ref}: {exc.message}"
        replies.append(r)
        if not args.json:
            print(ctx.out.safe(said))
    if args.json:
        ctx.out.json(replies)
    return 1 if failed else 0


def _one(args: argparse.Namespace, ctx: Ctx, ref: str, act: Callable[[str], tuple[dict[str, Any], str]]
         ) -> tuple[dict[str, Any], str] | int:
    """Act on one named session: its reply and line, or the exit code once a session that had ended already was said
    (as :func:`_each` says it, exit 0). `labd stop ID` of an ended session had exited 2 while `labd stop A B` and
    `--tag` of the same session exited 0: a script could not tell "already stopped" from a bad call."""
    try:
        return act(ref)
    except LabdError as exc:
        if exc.code != "not_running":
            raise
        return _reply(ctx, args, {"session": ref, "error": exc.code, "message": exc.message}, f"{ref}: {exc.message}")


def cmd_stop(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    grace = parse_grace(args.grace)
    refs = _targets(args, ctx)

    def stop(ref: str) -> tuple[dict[str, Any], str]:
        r = c.stop(ref, grace=grace)
        # a queued session never ran: it is taken off the queue, there is nothing to force
        said = dequeued(r["session"]) if r.get("was_queued") else \
            f"stopping {r['session']} (forced after {r['grace']:g}s)"
        return r, said

    if len(refs) != 1 or args.tag:
        code = _each(args, ctx, refs, stop)
        if args.wait:
            for ref in refs:
                try:
                    c.wait(ref)
                except LabdError:
                    continue
        return code
    one = _one(args, ctx, refs[0], stop)
    if isinstance(one, int):
        return one
    r, said = one
    if args.wait:
        s = c.wait(r["session"])
        r = {**r, "status": s["status"], "reason": s["reason"]}
        return _reply(ctx, args, r, f"{said}\n{s['status']}: {s['reason']}")
    return _reply(ctx, args, r, said)


def dequeued(sid: str) -> str:
    """What `labd stop` and `labd kill` say of a session that waited in the run queue (``was_queued``): no runner
    to stop or kill; a resumed session waiting to run again has run before, so not "it never ran"."""
    return f"{sid} taken off the queue (cancelled while it waited to run)"


def parse_grace(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)
    except UnitError as exc:
        raise CliError(f"--grace: {exc}") from None


def cmd_kill(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    refs = _targets(args, ctx)

    def kill(ref: str) -> tuple[dict[str, Any], str]:
        r = c.kill(ref)
        # a queued session has no process to kill: it is taken off the queue (as `labd stop` says)
        return r, dequeued(r["session"]) if r.get("was_queued") else f"killing {r['session']}"

    if len(refs) != 1 or args.tag:
        return _each(args, ctx, refs, kill)
    one = _one(args, ctx, refs[0], kill)
    return one if isinstance(one, int) else _reply(ctx, args, *one)


def _reason(text: str) -> str:
    """``--reason``: 1-1000 characters (what the daemon takes), said in the option's terms."""
    if not 0 < len(text) <= 1000:
        raise argparse.ArgumentTypeError("must be 1-1000 characters")
    return text


def cmd_pause(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    if args.cmd == "pause":
        r = c.pause(args.session, args.reason)
        if not r.get("pausing", True):
            return _reply(ctx, args, r, f"session {r['session']} is already paused (continue it with "
                          f"`labd resume {r['session']}`)")
        return _reply(ctx, args, r, f"pause requested for {r['session']} (takes effect at the next step boundary)")
    r = c.resume(args.session, budget=args.budget)  # `labd resume` is labd.frontends.cli.durable's cmd_resume
    return _reply(ctx, args, r, f"resume requested for {r['session']}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "stop", cmd_stop, "stop sessions: ask, then SIGTERM, then SIGKILL")
    s.add_argument("session", nargs="*", help="ids or names (several: one line each); one that has ended is said, "
                   "not an error (exit 0)")
    s.add_argument("--tag", action="append", default=[], metavar="K=V",
                   help="also every live session with this tag (repeat: all of them)")
    s.add_argument("--grace", metavar="DUR",
                   help="how long to wait before SIGTERM (default: the daemon's stop_grace, 5s unless configured)")
    s.add_argument("--wait", action="store_true", help="wait until it has ended")
    add_json(s, "the reply")

    s = command(sub, "kill", cmd_kill, "kill sessions' process trees now (SIGKILL)")
    s.add_argument("session", nargs="*", help="ids or names (as for stop)")
    s.add_argument("--tag", action="append", default=[], metavar="K=V",
                   help="also every live session with this tag (repeat: all of them)")
    add_json(s, "the reply")

    for name, what in (("pause", "pause a session at its next step boundary"),
                       ("resume", "resume a paused session, or continue an ended one (failed, lost, cancelled) from "
                                  "its last completed step")):
        s = command(sub, name, cmd_pause, what)
        s.add_argument("session")
        add_json(s, "the reply")
    s.add_argument("--budget", type=float, help="continue a budget-paused session with this budget (USD); "
                   "without it, the budget that paused it is lifted")
    sub.choices["pause"].set_defaults(budget=None)
    sub.choices["pause"].add_argument("--reason", default="pause requested", type=_reason,
                                      help="why (recorded with the request, shown by labd show while it is pending)")
