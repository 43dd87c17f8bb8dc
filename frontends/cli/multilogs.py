"""``labd logs [-f] A B ...`` and ``labd logs [-f] --tag K=V``: several sessions' output and activity in one stream.

Each line is prefixed with its session (``name | ``, the id when names repeat), as ``docker compose logs`` does, and
only whole lines are printed, so that two sessions printing at once never share a line: a session's unfinished line
waits for its end (or for the session's end). Without ``-f`` the sessions' histories come one after the other; with
``-f`` each session is followed by a thread of its own (a client each) and lines are printed as they arrive, until
every session has ended. Exit status as ``labd wait A B``: 0 if all completed, 1 otherwise, 130 on Ctrl-C (they keep
running).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from typing import Any

from rich.cells import cell_len, set_cell_size

from labd.frontends.cli import safetext
from labd.frontends.cli.activity import Activity, Line, stamp
from labd.frontends.cli.base import LIVE, CliError, Ctx
from labd.frontends.cli.interrupt import ctrl_c
from labd.frontends.cli.logs import Tail
from labd.frontends.cli.output import Output
from labd.frontends.cli.sessions import parse_tags
from labd.frontends.cli.waits import see_restarts_through

__all__ = ["logs_of_many", "Prefixed"]

#: the widest a session's label is shown (a longer name is cut; its id is always in `labd ps`)
LABEL_WIDTH = 24
#: an unfinished line longer than this is printed as it is (a session that never ends its line must not grow us)
MAX_PARTIAL = 64 * 1024
#: the most sessions ``--tag`` selects, and the most live ones followed at once (a thread and a connection each)
MAX_TAGGED = 9_999  # (session.list lists at most 10,000: one more tells there are more)
MAX_FOLLOWED = 200


class Prefixed:
    """Whole lines of several sessions, each prefixed with its session's label; notes (activity lines) to stderr."""

    def __init__(self, out: Output, labels: dict[str, str], *, timestamps: bool = False) -> None:
        self.out = out
        self.timestamps = timestamps
        # in terminal columns, not characters: a CJK name takes two a character, and padded by its length it pushed
        # its lines two columns right per character
        shown = {sid: safetext.text(label) for sid, label in labels.items()}
        width = min(max((cell_len(label) for label in shown.values()), default=0), LABEL_WIDTH)
        self.prefix = {sid: set_cell_size(label, width) + " | " for sid, label in shown.items()}
        self._partial: dict[tuple[str, str], tuple[float, str]] = {}  # (session, stream) -> (ts, text) unfinished
        self._safe = {"stdout": out.tty and not out.raw_output, "stderr": out.err_tty and not out.raw_output}

    def _stamp(self, ts: float) -> str:
        return stamp(ts) if self.timestamps else ""

    def write(self, sid: str, line: Line) -> None:
        """Print what of ``line`` ends a line of its session's stream; keep the rest for the next piece."""
        if line.stream == "note":
            if line.text.startswith("== session "):  # its end: nothing more comes, its last line goes before this
                self.end(sid)
            self.out.line(self.prefix[sid] + self._stamp(line.ts) + line.text, line.style, err=True)
            return
        key = (sid, line.stream)
        ts, text = self._partial.pop(key, (line.ts, ""))
        text += line.text
        if text.endswith(("\n", "\r")) or len(text) > MAX_PARTIAL:
            self._emit(sid, line.stream, ts, text)
        else:
            self._partial[key] = (ts, text)

    def end(self, sid: str) -> None:
        """The session has ended (or its history is printed): its unfinished lines are printed as lines."""
        for stream in ("stdout", "stderr"):
            left = self._partial.pop((sid, stream), None)
            if left is not None:
                self._emit(sid, stream, *left)

    def _emit(self, sid: str, stream: str, ts: float, text: str) -> None:
        body = text.rstrip("\r\n")
        if self._safe[stream]:  # a terminal: made safe, and colours it left on ended with the line
            body = safetext.output(body).replace("\n", "\n" + self.prefix[sid])
            if "\x1b[" in body:
                body += "\x1b[0m"
        f = self.out.stderr if stream == "stderr" else self.out.stdout
        f.write(self.prefix[sid] + self._stamp(ts) + body + "\n")
        f.flush()


def _sessions(args: argparse.Namespace, ctx: Ctx) -> list[dict[str, Any]]:
    """The sessions named (in order, each once) and, with ``--tag``, every session with those tags, oldest first
    (ended ones too, as ``labd ps --tag``: a tag names a batch, and a batch that ended has its logs to show)."""
    c = ctx.client()
    rows: dict[str, dict[str, Any]] = {}
    for ref in args.session:
        row = c.lookup(ref)
        rows.setdefault(row["id"], row)
    if args.tag:
        tagged = c.sessions(limit=MAX_TAGGED + 1, tags=parse_tags(args.tag))
        if len(tagged) > MAX_TAGGED:
            raise CliError(f"more than {MAX_TAGGED} sessions have those tags: name the sessions, or narrow the tags")
        for row in reversed(tagged):
            rows.setdefault(row["id"], row)
        if not rows:
            raise CliError("no session has those tags")
    if args.follow and sum(r["status"] in LIVE for r in rows.values()) > MAX_FOLLOWED:
        raise CliError(f"more than {MAX_FOLLOWED} of those sessions are live: follow at most {MAX_FOLLOWED} at once "
                       "(each is a connection of its own)")
    return list(rows.values())


def _labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each session's name as shown (cut to :data:`LABEL_WIDTH`), or its id where those repeat (or it has none):
    a sweep's names often differ only at their end, past the cut."""
    shown = [(r.get("name") or "")[:LABEL_WIDTH].rstrip() for r in rows]  # as padded: "run" and "run " look alike
    return {r["id"]: name if name and shown.count(name) == 1 else r["id"] for r, name in zip(rows, shown, strict=True)}


def logs_of_many(args: argparse.Namespace, ctx: Ctx) -> int:
    """``labd logs`` of several sessions (see the module docstring)."""
    try:
        with ctrl_c():
            return _logs_of_many(args, ctx)
    except KeyboardInterrupt:  # (the follow says which sessions keep running; here, during the histories)
        if args.follow:
            ctx.out.line("\n== detached: the sessions keep running (`labd ps` lists them)", "bold yellow", err=True)
        return 130


def _logs_of_many(args: argparse.Namespace, ctx: Ctx) -> int:
    if args.tail is not None and args.tail < 0:
        raise CliError("--tail takes a number of lines (0 or more)")
    c = ctx.client()
    if args.follow:
        see_restarts_through(c)
    rows = _sessions(args, ctx)
    ctx.out.raw_output = args.raw_control_chars
    printer = Prefixed(ctx.out, _labels(rows), timestamps=args.timestamps)
    last: dict[str, int] = {}
    for row in rows:  # the history of each, one after the other (--tail: its last N lines, as `labd logs S` counts)
        sid, activity = row["id"], Activity(row["id"], raw=args.raw)
        tail = None if args.tail is None else Tail(args.tail if args.tail <= sys.maxsize else None)
        for ev in c.history(sid):
            last[sid] = ev["seq"]
            for line in activity.lines(ev):
                if tail is None:
                    printer.write(sid, line)
                elif args.tail:
                    tail.add(line)
        for line in tail.lines() if tail is not None else ():
            printer.write(sid, line)
        if not args.follow or row["status"] not in LIVE:  # its last line is not coming: printed now, in its place
            printer.end(sid)
    if not args.follow:
        return 0
    return _follow_all(ctx, rows, printer, last, args.raw)


def _ended(ctx: Ctx, printer: Prefixed, ended: dict[str, str], sid: str, status: str) -> None:
    """Note how a session ended (said on stderr unless it completed)."""
    ended[sid] = status
    if status != "completed":
        ctx.out.line(f"{printer.prefix[sid]}== ended {status}", "bold red", err=True)


def _follow_all(ctx: Ctx, rows: list[dict[str, Any]], printer: Prefixed, last: dict[str, int], raw: bool) -> int:
    """Follow every session from where its history ended, a thread and a client each, until all have ended."""
    from labd.ipc.client import Client

    q: queue.Queue[tuple[str, str, Any]] = queue.Queue(maxsize=10_000)  # bounded: a flood waits for the terminal

    def follow_one(sid: str) -> None:
        c = Client(ctx.home, connection_file=getattr(ctx.args, "connect", None))
        see_restarts_through(c)
        try:
            activity, status = Activity(sid, raw=raw), None
            for ev in c.follow(sid, since=last.get(sid, 0)):
                for line in activity.lines(ev):
                    q.put(("line", sid, line))
                if ev["kind"] == "session.ended":
                    status = ev["payload"].get("status")
            q.put(("end", sid, status or c.session(sid)["status"]))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which decides the exit
            q.put(("error", sid, exc))
        finally:
            c.close()

    ended: dict[str, str] = {}
    live = [r for r in rows if r["status"] in LIVE]
    for row in rows:  # ended before this began: their history is all there is
        if row["status"] not in LIVE:
            _ended(ctx, printer, ended, row["id"], row["status"])
    if live:
        ctx.out.line(f"== following {len(live)} live session{'s' if len(live) > 1 else ''} (Ctrl-C detaches; "
                     f"{'they keep' if len(live) > 1 else 'it keeps'} running)", "bold", err=True)
    for row in live:
        threading.Thread(target=follow_one, args=(row["id"],), name=f"follow-{row['id']}", daemon=True).start()
    try:
        with ctrl_c() as pressed:
            while len(ended) < len(rows):
                try:
                    what, sid, item = q.get(timeout=0.2)  # a timeout: Ctrl-C is seen while nothing arrives
                except queue.Empty:
                    pressed.check()
                    continue
                if what == "line":
                    printer.write(sid, item)
                    continue
                printer.end(sid)
                if what == "error":
                    raise item
                _ended(ctx, printer, ended, sid, item)
    except KeyboardInterrupt:
        left = [r["id"] for r in rows if r["id"] not in ended]
        ctx.out.line(f"\n== detached: {', '.join(left)} keep running (`labd ps` lists them)", "bold yellow",
                     err=True)
        return 130
    return 0 if all(status == "completed" for status in ended.values()) else 1
