"""What a session printed and did: ``logs`` (output and agent activity) and ``events`` (the raw record)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterator
from datetime import datetime

from labd.frontends.cli.activity import Activity, Line, Printer
from labd.frontends.cli.base import CliError, Ctx, add_json, command
from labd.frontends.cli.sessions import RAW_CONTROL_HELP, say_if_queued
from labd.frontends.cli.waits import follow, see_restarts_through
from labd.ipc.events import SCHEMAS

__all__ = ["register", "Tail"]


def cmd_logs(args: argparse.Namespace, ctx: Ctx) -> int:
    if len(args.session) != 1 or args.tag:
        if not args.session and not args.tag:
            raise CliError("name a session (or several), or select live sessions with --tag K=V")
        from labd.frontends.cli.multilogs import logs_of_many

        return logs_of_many(args, ctx)
    args.session = args.session[0]
    c = ctx.client()
    if args.follow:  # a follower sees a daemon restart through (labd wait too): from its first request on
        see_restarts_through(c)
    sid = c.lookup(args.session)["id"]
    if args.follow:
        say_if_queued(ctx, sid)
    raw = args.raw
    ctx.out.raw_output = args.raw_control_chars
    if args.tail is not None and args.tail < 0:
        raise CliError("--tail takes a number of lines (0 or more)")
    last = 0
    if args.tail is not None:
        # Render the history first and keep its last N lines (output lines and activity lines alike). A --tail
        # beyond what a deque can count (sys.maxsize) is more lines than any history has: all of them.
        activity = Activity(sid, raw=raw)
        tail = Tail(args.tail if args.tail <= sys.maxsize else None)
        for ev in c.history(sid):
            last = ev["seq"]
            if args.tail:
                for line in activity.lines(ev):
                    tail.add(line)
        printer = Printer(ctx.out, timestamps=args.timestamps)
        for line in tail.lines():
            printer.write(line)
        printer.close()
        if not args.follow:
            return 0
        return follow(ctx, sid, raw=raw, timestamps=args.timestamps, since=last)
    if args.follow:
        return follow(ctx, sid, raw=raw, timestamps=args.timestamps)
    activity, printer = Activity(sid, raw=raw), Printer(ctx.out, timestamps=args.timestamps)
    try:
        for ev in c.history(sid):
            for line in activity.lines(ev):
                printer.write(line)
    finally:
        printer.close()
    return 0


class Tail:
    """The last ``n`` lines (all with ``None``) of a session's rendered history, as ``tail -n`` counts the lines
    ``labd logs`` prints: a line of output is one line however many ``output`` events it came in (each stream's
    pieces go together up to its newline: stdout written between two pieces of a stderr line does not cut it, nor
    the other way round), an unfinished line at the end counts as a line, and an activity line is a line (it goes
    to stderr on a fresh line, so it ends a stderr line left unfinished before it, as :class:`Printer` shows it).
    Lines are in the order they started and keep the time of the event where they started (``-t`` shows when a
    line began to be written). Memory holds the last ``n`` lines, each whole (a single huge line is kept whole, as
    tail does), never the whole history."""

    def __init__(self, n: int | None) -> None:
        self._kept: deque[_Pieces] = deque(maxlen=n)
        self._open: dict[str, _Pieces] = {}  # per stream: its line still being written (no newline yet)

    def add(self, line: Line) -> None:
        """Take the next rendered piece: an activity line, or a piece of output (at most one line, as
        :meth:`Activity.lines` splits it; a piece not ending in a newline goes on in the stream's next piece)."""
        if line.stream == "note":  # the printer starts a note on a fresh line: it ends a stderr line (on stderr too)
            self._open.pop("stderr", None)
        at = self._open.pop(line.stream, None)
        if at is None:
            at = _Pieces(line)
            if self._kept.maxlen is not None and len(self._kept) == self._kept.maxlen:
                self._kept[0].texts = None  # falls out of the tail: the rest of it, if it is still open, is dropped
            self._kept.append(at)
        elif at.texts is not None:
            at.texts.append(line.text)
        if line.stream != "note" and not line.text.endswith("\n"):
            self._open[line.stream] = at

    def lines(self) -> Iterator[Line]:
        """The kept lines, for a :class:`Printer`: a line of output as its pieces, one after the other (the printer
        stamps the first only; no copy of a huge line joined)."""
        for at in self._kept:
            for text in at.texts or ():
                yield at.line._replace(text=text)


class _Pieces:
    """One line of :class:`Tail`: its first piece and the text of all its pieces (``None`` once dropped)."""

    __slots__ = ("line", "texts")

    def __init__(self, line: Line) -> None:
        self.line = line
        self.texts: list[str] | None = [line.text]


def follow_json(ctx: Ctx, sid: str) -> int:
    """Print a session's events as JSON lines until it ends (``labd run --follow --json``); the exit code of
    :func:`labd.frontends.cli.waits.follow` (0 completed, 1 otherwise)."""
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
    for k in args.kind or ():  # a misspelt kind printed nothing, which read as "no such events"
        if not any(kind.startswith(k) for kind in SCHEMAS):
            raise CliError(f"--kind: no event kind {k!r} (nor any starting so); the kinds: "
                           f"{', '.join(sorted(SCHEMAS))}")
    it = c.follow(args.session, since=args.since) if args.follow else c.history(
        args.session, since=args.since, full=args.full, node=args.node, agent=args.agent)
    shown = 0
    for ev in it:
        if args.kind and not any(ev["kind"].startswith(k) for k in args.kind):
            continue
        shown += 1
        if args.json:
            print(json.dumps(ev, default=str), flush=True)
        else:
            t = datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")[:-3]
            node = f" [{ev['node_id']}]" if ev["node_id"] else ""
            payload = json.dumps(ev["payload"], default=str)  # JSON: control characters escaped as \uXXXX
            print(ctx.out.safe(f"{ev['seq']:>7} {t} {ev['src'][0]} {ev['kind']}{node} "
                               f"{payload if args.full else payload[:200]}"), flush=True)
    if not shown and not args.follow and (args.agent or args.node or args.kind or args.since):
        # a misspelt agent or node printed nothing and exited 0: say which filter left nothing (still exit 0: an
        # empty selection is an answer, and scripts read stdout)
        said = [f"{flag} {value}" for flag, value in (("--agent", args.agent), ("--node", args.node),
                                                     ("--since", args.since)) if value]
        said += [f"--kind {k}" for k in args.kind or ()]
        ctx.out.line(f"no events of {args.session} match {' '.join(said)}", "dim", err=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "logs", cmd_logs, "a session's output and agent activity (history, then live with -f)",
                epilog="The session's stdout/stderr go to stdout/stderr verbatim; activity lines (steps, agent "
                "turns,\ntool calls, code runs, costs, approvals waiting) go to stderr. On a terminal, escape "
                "sequences and\nother control characters the session printed are shown as text (\\x1b[2J, "
                "\\x07), colours kept;\na carriage return starts a new line. Piped or redirected, the output is "
                "exactly what was recorded.\n\nExit status: with -f, how the session ended (as `labd run --follow` / "
                "`--wait`): 0 if it\ncompleted, 1 if it ended otherwise (failed, cancelled, lost), 130 on Ctrl-C "
                "(detached: the\nsession keeps running); without -f, 0. An error is 2.\n\nSeveral sessions "
                "(`labd logs -f A B`, `--tag K=V`): each line prefixed with its session's\nname, whole lines only; "
                "exit status 0 if all completed.")
    s.add_argument("session", nargs="*", help="a session (id or name); several: their lines prefixed")
    s.add_argument("--tag", action="append", default=[], metavar="K=V",
                   help="also every session with this tag, ended ones too (repeat: all of them)")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing until the session ends "
                   "(exit status: 0 if it completed, 1 otherwise)")
    s.add_argument("--tail", "-n", type=int, metavar="N", help="only the last N lines of the history")
    s.add_argument("--timestamps", "-t", action="store_true", help="prefix each line with the time it was recorded")
    s.add_argument("--raw", action="store_true", help="only the session's own output, no activity lines")
    s.add_argument("--output-only", dest="raw", action="store_true", help=argparse.SUPPRESS)  # the old name
    s.add_argument("--raw-control-chars", action="store_true", help=RAW_CONTROL_HELP)

    s = command(sub, "events", cmd_events, "a session's recorded events (the raw record)")
    s.add_argument("session")
    s.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events with seq > SEQ")
    s.add_argument("--kind", action="append", help="only kinds starting with this (repeatable)")
    s.add_argument("--follow", "-f", action="store_true", help="then the new events as they are recorded, until "
                   "the session ends")
    s.add_argument("--full", action="store_true", help="complete payloads: LLM requests/responses with blobs inlined")
    s.add_argument("--node", help="only this DAG node and the nodes nested in it")
    s.add_argument("--agent", help="only events of this agent")
    add_json(s, "one JSON object per line (JSON Lines: seq, ts, kind, src, node_id, parent, payload, src_seq)")
