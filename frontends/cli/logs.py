"""What a session printed and did: ``logs`` (output and agent activity) and ``events`` (the raw record)."""

from __future__ import annotations

import argparse
import json
from collections import deque
from datetime import datetime

from labd.frontends.cli.activity import Activity, Line, Printer
from labd.frontends.cli.base import CliError, Ctx, add_json, command
from labd.frontends.cli.sessions import follow

__all__ = ["register"]


def cmd_logs(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    sid = c.session(args.session)["id"]
    raw = args.raw
    if args.tail is not None and args.tail < 0:
        raise CliError("--tail takes a number of lines (0 or more)")
    last = 0
    if args.tail is not None:
        # Render the history first and keep its last N lines (output lines and activity lines alike).
        activity = Activity(sid, raw=raw)
        kept: deque[Line] = deque(maxlen=args.tail or None)
        for ev in c.history(sid):
            last = ev["seq"]
            if args.tail:
                kept.extend(activity.lines(ev))
        printer = Printer(ctx.out, timestamps=args.timestamps)
        for line in kept:
            printer.write(line)
        if not args.follow:
            return 0
        return _exit(follow(ctx, sid, raw=raw, timestamps=args.timestamps, since=last))
    if args.follow:
        return _exit(follow(ctx, sid, raw=raw, timestamps=args.timestamps))
    activity, printer = Activity(sid, raw=raw), Printer(ctx.out, timestamps=args.timestamps)
    for ev in c.history(sid):
        for line in activity.lines(ev):
            printer.write(line)
    return 0


def _exit(code: int) -> int:
    # `logs -f` reports a detach (130); the session's own outcome is not the logs command's failure
    return 130 if code == 130 else 0


def follow_json(ctx: Ctx, sid: str) -> int:
    """Print a session's events as JSON lines until it ends (``labd run --follow --json``); the exit code of
    :func:`labd.frontends.cli.sessions.follow` (0 completed, 1 otherwise)."""
    status = None
    for ev in ctx.client().follow(sid):
        print(json.dumps(ev, default=str), flush=True)
        if ev["kind"] == "session.ended":
            status = ev["payload"].get("status")
    return 0 if (status or ctx.client().session(sid)["status"]) == "completed" else 1


def cmd_events(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    if args.follow and (args.full or args.node or args.agent):
        raise CliError("--full, --node and --agent read the stored history; they do not combine with --follow")
    it = c.follow(args.session, since=args.since) if args.follow else c.history(
        args.session, since=args.since, full=args.full, node=args.node, agent=args.agent)
    for ev in it:
        if args.kind and not any(ev["kind"].startswith(k) for k in args.kind):
            continue
        if args.json:
            print(json.dumps(ev, default=str), flush=True)
        else:
            t = datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")[:-3]
            node = f" [{ev['node_id']}]" if ev["node_id"] else ""
            payload = json.dumps(ev["payload"], default=str)
            print(f"{ev['seq']:>7} {t} {ev['src'][0]} {ev['kind']}{node} {payload if args.full else payload[:200]}",
                  flush=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "logs", cmd_logs, "a session's output and agent activity (history, then live with -f)",
                epilog="The session's stdout/stderr go to stdout/stderr verbatim; activity lines (steps, agent "
                "turns,\ntool calls, code runs, costs, approvals waiting) go to stderr.")
    s.add_argument("session")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing until the session ends")
    s.add_argument("--tail", "-n", type=int, metavar="N", help="only the last N lines of the history")
    s.add_argument("--timestamps", "-t", action="store_true", help="prefix each line with the time it was recorded")
    s.add_argument("--raw", action="store_true", help="only the session's own output, no activity lines")
    s.add_argument("--output-only", dest="raw", action="store_true", help=argparse.SUPPRESS)  # the old name

    s = command(sub, "events", cmd_events, "a session's recorded events (the raw record)")
    s.add_argument("session")
    s.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events with seq > SEQ")
    s.add_argument("--kind", action="append", help="only kinds starting with this (repeatable)")
    s.add_argument("--follow", "-f", action="store_true")
    s.add_argument("--full", action="store_true", help="complete payloads: LLM requests/responses with blobs inlined")
    s.add_argument("--node", help="only this DAG node and the nodes nested in it")
    s.add_argument("--agent", help="only events of this agent")
    add_json(s, "one JSON object per line (JSON Lines: seq, ts, kind, src, node_id, parent, payload, src_seq)")
