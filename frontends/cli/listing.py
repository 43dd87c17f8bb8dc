"""`labd ps` and `labd show`: which sessions there are, and how one of them went."""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from datetime import datetime
from typing import Any

from labd.frontends.cli.base import LIVE, CliError, Ctx, add_json, comma_list, command
from labd.frontends.cli.output import STATUS_STYLE, Cell, age, natural_key, styled
from labd.frontends.cli.sessions import parse_tags
from labd.ipc.errors import LabdError
from labd.ipc.events import STATUSES
from labd.ipc.functions import FUNCTION_WORKFLOW
from labd.ipc.listing import MAX_LIST
from labd.ipc.units import UnitError, format_duration, format_size, parse_duration

__all__ = ["register", "fit_name", "workflow_label", "truncation_text", "ENDED_BY", "ended_by_text", "ps_status",
           "timing_text", "heard_text", "QUIET_S"]
#: seconds without a word from a live session's runner before ``labd show`` calls it unresponsive: a runner with
#: nothing to send (sleeping, paused, waiting for an approval) sends a heartbeat every 30 s; two and a half missed
QUIET_S = 75.0


def heard_text(s: dict[str, Any], now: float) -> Cell | None:
    """``labd show``'s line on when a live session's runner was last heard from (None for an ended session);
    flagged only past :data:`QUIET_S` (an idle runner is heard from at its heartbeat: it was flagged after 10 s)."""
    if s["status"] not in LIVE or not s.get("last_seen"):
        return None
    quiet = now - s["last_seen"]
    late = quiet > QUIET_S
    return styled(f"last heard from {quiet:.1f}s ago" + ("  (unresponsive?)" if late else ""), "red" if late else None)


def _ps_rows(args: argparse.Namespace, ctx: Ctx) -> tuple[list[dict[str, Any]], bool]:
    """The sessions ``labd ps`` lists, and whether more match than ``--limit`` let it list."""
    statuses: list[str] | None = None
    if args.status:
        statuses = comma_list("--status", args.status, STATUSES)
    elif not args.all:
        statuses = list(LIVE)
    tags = parse_tags(args.tag)
    if tags and not args.status:
        statuses = None  # a tag selects sessions whatever their status
    cutoff = None
    if args.since:
        try:
            cutoff = max(time.time() - parse_duration(args.since), 0.0)  # before 1970: all of them
        except UnitError as exc:
            raise CliError(f"--since: {exc}") from None
    # --workflow and --name (a substring or glob; a workflow also by a submitted function's label) are matched here,
    # on pages read until --limit sessions match: --limit counts the matches (applied first, it hid older ones)
    keep = _matcher(args)
    rows: list[dict[str, Any]] = []
    more = False
    # one more than --limit tells whether more match; matched here, or all: a page of FILTER_PAGE at a time
    page = min(args.limit + 1, MAX_LIST) if keep is None and args.limit else FILTER_PAGE
    try:
        for r in ctx.client().iter_sessions(status=statuses, tags=tags or None, since=cutoff, page=page):
            if keep is not None and not keep(r):
                continue
            if args.limit and len(rows) == args.limit:
                more = True
                break
            rows.append(r)
    except LabdError as exc:
        if exc.code != "list_incomplete":  # an older daemon: its newest 10,000 are listed, and the note says so
            raise
        more = True
    if args.sort:
        rows.sort(key=SORTS[args.sort], reverse=args.sort in ("cost", "rss", "cpu"))  # the most first
    return rows, more


def _matcher(args: argparse.Namespace) -> Any:
    """The test of ``--workflow`` and ``--name`` on a listed session; None without them."""
    if not args.workflow and not args.name:
        return None
    wf, name = _pattern(args.workflow or "*"), _pattern(args.name or "*")
    return lambda r: (fnmatch.fnmatchcase(r["name"], name)
                      and any(fnmatch.fnmatchcase(w, wf) for w in (r["workflow"], workflow_label(r))))


def _pattern(text: str) -> str:
    """A filter's glob: the text itself if it is one (it has a ``*`` or ``?``), else "contains the text", taken
    literally: ``--name 'lr[0.1]'`` finds names holding ``lr[0.1]`` (read as a glob's character class, it found
    ``lr0``, ``lr1`` and ``lr.`` and not the name typed)."""
    if any(ch in text for ch in "*?"):
        return text
    return "*" + text.replace("[", "[[]") + "*"  # fnmatch has no escape: a "[" is the class of one "["


def _rss(row: dict[str, Any]) -> int | None:
    """A row's RSS as ps shows it: the live figure; a session waiting in the queue has no process (a resumed one's
    peak is its previous runner's); an ended one its peak."""
    live = row.get("live") or {}
    return live.get("rss") if live else None if row["status"] in WAITING else row.get("peak_rss")


#: ``labd ps --sort``: the key of each order (cost, rss and cpu: the most first; the others ascending)
SORTS: dict[str, Any] = {
    "cost": lambda r: r.get("cost") or 0.0,
    "rss": lambda r: _rss(r) or 0,
    "cpu": lambda r: (r.get("live") or {}).get("cpu_percent") or 0.0,
    "name": lambda r: natural_key(r["name"]),
    "workflow": lambda r: natural_key(workflow_label(r)),
    "status": lambda r: r["status"],
    "created": lambda r: r["created_at"],
}


def cmd_ps(args: argparse.Namespace, ctx: Ctx) -> int:
    rows, more = _ps_rows(args, ctx)  # more match: a list must not look complete (nor a script's, below)
    if args.json or args.quiet:
        if args.json:
            ctx.out.json(rows)
        else:
            for r in rows:
                print(r["id"])
        if more:  # `labd ps -q | xargs labd rm` deleted only the newest 200 of a batch, with no word
            ctx.out.line(f"labd ps: only the newest {len(rows)} listed; {_more_hint(args)}", err=True)
        return 0
    if not rows:
        hint = "" if args.all or args.status else " (labd ps -a shows ended ones too)"
        ctx.out.line(f"no {'matching' if args.all or args.status else 'live'} sessions{hint}", "dim", err=True)
        return 0
    table = []
    for r in rows:
        live = r.get("live") or {}
        rss = _rss(r)
        status = styled(ps_status(r), STATUS_STYLE.get(r["status"]))
        # cut on a terminal only: a pipe gets whole names (`labd ps -a | grep lr0.002` found no row)
        table.append([r["id"], fit_name(r["name"], 28) if ctx.out.tty else r["name"],
                      fit_name(workflow_label(r), 40) if ctx.out.tty else workflow_label(r), status,
                      str(r["pid"] or "-"), format_size(rss), f"{live['cpu_percent']:.0f}%" if live else "-",
                      f"${r['cost']:.4f}" if r.get("cost") else "-", age(r["created_at"])])
    ctx.out.table(["ID", "NAME", "WORKFLOW", "STATUS", "PID", "RSS", "CPU", "COST", "AGE"], table,
                  right=("PID", "RSS", "CPU", "COST", "AGE"))
    if more:
        ctx.out.line(f"(the newest {len(rows)}; more match: {_more_hint(args)})", "dim", err=True)
    return 0


def _more_hint(args: argparse.Namespace) -> str:
    """How to list the sessions a cut list left out: a bigger ``--limit``, or, when ``--limit all`` was cut (only a
    daemon older than paging cuts it, at its newest 10,000), the daemon's restart on this labd."""
    if not args.limit:
        return "the daemon lists only its newest 10,000 (it is older than paging: restart it on this labd)"
    return "--limit N (or all) lists more" if args.quiet or args.json else "--limit N or --limit all shows them"


#: statuses of a session that waits for a place to run (the run queue): no runner, no run time yet
WAITING = ("created", "queued")


def ps_status(row: dict[str, Any]) -> str:
    """The STATUS cell of ``labd ps``: a queued session's place in the run queue (``queue_position``) and its
    priority (``queue_priority``) if not the default (``queued #2``, ``queued #1 prio 5``); ``pausing`` for a running
    session asked to pause that has not reached its next step boundary yet; else the status."""
    status = str(row["status"])
    if status == "running" and isinstance(row.get("pausing"), dict):
        return "pausing"
    if status not in WAITING or not isinstance(row.get("queue_position"), int):
        return status
    prio = row.get("queue_priority")
    return f"queued #{row['queue_position']}" + (f" prio {prio}" if isinstance(prio, int) and prio else "")


#: sessions read per page while ``--workflow`` or ``--name`` (matched here) look for ``--limit`` matches, or for
#: ``--limit all``: a reply of a few MiB at most
FILTER_PAGE = 2000


def _ps_limit(text: str) -> int:
    """``--limit``: a whole number from 1, or ``all`` (0: every matching session, read a page at a time)."""
    if text == "all":
        return 0
    if not text.isdigit() or not 1 <= int(text) <= 10**9:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1, or all, not {text!r}")
    return int(text)


def workflow_label(row: dict[str, Any]) -> str:
    """What a session runs, as people name it: a function sent with ``Client.submit`` by its name (``analyse
    (submitted)``), not the built-in workflow that calls it."""
    if row["workflow"] == FUNCTION_WORKFLOW:
        return f"{(row.get('params') or {}).get('function') or 'function'} (submitted)"
    return str(row["workflow"])


def _limits_text(lim: dict[str, Any]) -> str:
    parts = [f"memory {format_size(lim['memory']) if lim.get('memory') else 'none'}",
             f"cpu {lim['cpu']:g}% ({lim['cpu'] / 100:g} cores)" if lim.get("cpu") else "cpu none",
             f"timeout {format_duration(lim['timeout'])}" if lim.get("timeout") else "timeout none"]
    if lim.get("budget"):
        parts.append(f"budget ${lim['budget']:g} ({lim.get('budget_action') or 'stop'})")
    if lim.get("procs"):
        parts.append(f"procs {lim['procs']}")
    if lim.get("output"):
        parts.append(f"output {format_size(lim['output'])}")
    return ", ".join(parts)


def _entered(history: list[dict[str, Any]], statuses: tuple[str, ...], default: float) -> float:
    """When the session last entered one of ``statuses`` (its state history, session-level transitions)."""
    for h in reversed(history):
        if h.get("node_id") is None and h.get("to_status") in statuses:
            return float(h["ts"])
    return default


def timing_text(s: dict[str, Any], now: float) -> str:
    """How long a session ran, or that it did not: ``ran 5m12s``; ``queued for 7s`` (waiting in the run queue);
    ``never ran (ended 17s after it was created)`` for one stopped while queued or whose launch failed. Only a
    runner that started makes run time (``started_at``); a resumed session queued again is not running either. A
    resumed session's figure covers all its runs: ``ran 2d3h in 2 runs (the last 4s)``."""
    history, created, status = s.get("history") or [], s["created_at"], s["status"]
    started, ended = s.get("started_at"), s.get("ended_at")
    if status in WAITING:
        since = _entered(history, WAITING, created)
        return f"queued for {format_duration(now - since)}" + (" (again: it ran before)" if started else "")
    # a resumed session's started_at is its previous runner's until its new runner starts
    again = started is not None and _entered(history, ("queued",), 0.0) > started
    if started is None or again:
        if status == "starting":
            return f"starting for {format_duration(now - _entered(history, ('starting',), created))}"
        if ended is None:
            return "not started"
        if again:  # resumed, queued again, and ended (e.g. stopped) before a new runner started
            return f"never ran again (ended {format_duration(ended - _entered(history, ('queued',), 0.0))} after " \
                   "it was queued again)"
        return f"never ran (ended {format_duration(ended - created)} after it was created)"
    last = (ended or now) - started
    if s.get("runs"):  # resumed: started_at .. ended_at is its last run's; the runs before it ran as long as this
        return f"ran {format_duration(last + s.get('earlier_runs_seconds', 0.0))} in {s['runs']} runs (the last " \
               f"{format_duration(last)})"
    return f"ran {format_duration(last)}"


def fit_name(name: str, width: int) -> str:
    """``name`` in at most ``width`` terminal columns (a CJK character takes two): a longer one keeps its start and
    its end around a "…" (a branch's name is its parent's with ``-branch-<id>`` added: cut at the end, every branch
    read like its parent)."""
    from rich.cells import cell_len

    if cell_len(name) <= width:
        return name
    tail_width = (width - 1) // 2
    head, used = [], 0
    for ch in name:  # whole characters: a wide one that would straddle the edge is left out
        used += cell_len(ch)
        if used > width - 1 - tail_width:
            break
        head.append(ch)
    tail, used = [], 0
    for ch in reversed(name):
        used += cell_len(ch)
        if used > tail_width:
            break
        tail.append(ch)
    return "".join(head) + "…" + "".join(reversed(tail))


def truncation_text(events: Any) -> str | None:
    """``[output truncated at 10.0M: 1.2G dropped]`` from a session's ``output.truncated`` events (the
    runner's and the daemon backstop's); None if its output was never cut."""
    cap, dropped = None, 0
    for ev in events:
        p = ev.get("payload") or {}
        cap = p.get("cap", cap)
        dropped += p.get("dropped") or 0
    if cap is None:
        return None
    return f"[output truncated at {format_size(cap)}" + (f": {format_size(dropped)} dropped]" if dropped else "]")


#: how a session's runner ended (``ended_by``, docs/protocol.md §6.2), in words
ENDED_BY = {
    "exit": "its runner exited", "cooperative": "stop request (the workflow stopped at a step boundary)",
    "sigterm": "stop ladder: SIGTERM", "sigkill": "SIGKILL (kill, memory limit, or the stop ladder's last rung)",
    "vanished": "its runner ended with no exit status to read (a runner adopted after a daemon restart, one whose "
                "runner template died, or one that ended while no daemon ran; its outcome came from its record)",
    "launch": "its runner could not be started", "queue": "stopped while queued (no runner ever started)",
}


#: who asked a session to stop (``stop_by``), in words
STOP_BY = {"client": "a client (labd stop or kill)", "limit": "its limit", "daemon": "the daemon (serve --drain)"}


def ended_by_text(s: dict[str, Any]) -> str:
    """How the session's runner ended, and who asked when someone did (``stop_by``): a wall-time limit's stop read
    as a plain stop request, a `labd kill` as one of three possible causes."""
    how, who = s.get("ended_by") or "", s.get("stop_by")
    if who in STOP_BY and how in ("cooperative", "sigterm", "sigkill"):
        words = {"cooperative": "the workflow stopping at a step boundary", "sigterm": "SIGTERM (the stop ladder)",
                 "sigkill": "SIGKILL"}[how]
        return f"{words}, asked by {STOP_BY[who]}"
    return ENDED_BY.get(how, how or "-")


def _cpu_time(ended: Any) -> str:
    """``; cpu time 1.2s`` over the session's runs (``cpu_seconds`` of each ``session.ended``), or "" when no run
    says (a runner still running, or one whose end the daemon noticed rather than reaped). The peak percentage is
    sampled every few tenths of a second: a short session's reads 0 %, its CPU time does not."""
    runs = [e["payload"]["cpu_seconds"] for e in ended if isinstance(e["payload"].get("cpu_seconds"), (int, float))]
    if not runs:
        return ""
    return f"; cpu time {format_duration(sum(runs))}" + (f" in {len(runs)} runs" if len(runs) > 1 else "")


def params_text(params: dict[str, Any], most: int = 1000) -> str:
    """A session's params as JSON for ``labd show``: at most ``most`` characters, then how many there are."""
    text = json.dumps(params)
    return text if len(text) <= most else f"{text[:most]}... ({len(text):,} characters; labd show --json: all)"


def cmd_show(args: argparse.Namespace, ctx: Ctx) -> int:
    s = ctx.client().session(args.session)
    if args.json:
        ctx.out.json(s)
        return 0
    lim, live = s["limits"], s.get("live") or {}
    # one read of the record for both: how each run ended (its CPU time) and whether the output was cut
    told = list(ctx.client().history(s["id"], kinds=["session.created", "session.placed", "session.ended",
                                                     "output.truncated"]))
    status = ps_status(s) + (f"  ({s['reason']})" if s["reason"] and s["reason"] != s["status"] else "")
    if isinstance(pausing := s.get("pausing"), dict):
        status += f"  (pause asked by {pausing.get('by')}: {pausing.get('reason')}; it pauses at its next step)"
    pairs: list[tuple[str, Any]] = [
        ("session", f"{s['id']}  ({s['name']})"),
        ("workflow", f"{s['workflow']}  params {params_text(s['params'])}"),
        ("status", styled(status, STATUS_STYLE.get(s["status"]))),
        ("ended by", ended_by_text(s)
         + (f"  exit code {s['exit_code']}" if s["exit_code"] is not None else "")
         + (f"  signal {s['signal']}" if s["signal"] else "")),
        ("pid", f"{s['pid'] or '-'}   workdir {s['workdir']}"),
        ("limits", _limits_text(lim)),
        ("peaks", f"rss {format_size(max(s['peak_rss'] or 0, live.get('peak_rss', 0)))}, "
         f"cpu {max(s['peak_cpu_percent'] or 0, live.get('peak_cpu_percent', 0)):.0f}%"
         + _cpu_time(e for e in told if e["kind"] == "session.ended")),
        ("timings", f"created {datetime.fromtimestamp(s['created_at']).isoformat(timespec='seconds')}, "
         f"{timing_text(s, time.time())}, events {s['last_seq']}"),
    ]
    placed = [e["payload"] for e in told if e["kind"] == "session.placed"]
    if placed:  # a Ray session: where it runs (only `labd events` said)
        p = placed[-1]
        where = p.get("hostname") or p.get("ip") or "?"
        pairs.insert(4, ("runs on", f"Ray node {where}" + (f" ({p['ip']})" if p.get("ip") and p.get("hostname") else "")
                         + (f", node id {str(p['node'])[:16]}" if p.get("node") else "")
                         + (f", runner pid {p['pid']}" if p.get("pid") else "")))
    came = _started_from(s, next((e["payload"] for e in told if e["kind"] == "session.created"), {}))
    if came:
        pairs.insert(2, ("started from", came))
    if s["status"] == "completed" and s.get("outcome_error"):  # e.g. a result too large to record
        pairs.append(("result", styled(str(s["outcome_error"]), "yellow")))
    elif s["status"] == "completed":  # not read here: a result may be megabytes (labd result reads it)
        pairs.append(("result", styled(f"labd result {s['id']}", "dim")))
    if s["cost"]:
        budget = lim.get("budget")
        pairs.append(("llm cost", f"${s['cost']:.6f}" + (f" of budget ${budget:g}" if budget else "")
                      + "  (labd cost for details)"))
    cut = truncation_text(e for e in told if e["kind"] == "output.truncated")
    if cut:
        pairs.append(("output", styled(cut, "yellow")))
    heard = heard_text(s, time.time())
    if heard:
        pairs.append(("runner", heard))
    ctx.out.fields(pairs)
    if s["steps"]:
        rows = [[st["node_id"], styled(st["status"], STATUS_STYLE.get(st["status"])),
                 format_duration(st["duration"]) if st["duration"] is not None else "…", st["name"],
                 f"${st['cost']:.6f}" if st.get("calls") else "", st["error"] or ""]
                for st in sorted(s["steps"], key=lambda st: natural_key(st["node_id"]))]
        ctx.out.line("")
        ctx.out.table(["NODE", "STATUS", "TIME", "STEP", "COST", "ERROR"], rows, right=("TIME", "COST"))
    if s.get("steps_omitted"):
        ctx.out.line(f"(the newest {len(s['steps'])} nodes; {s['steps_omitted']} earlier ones are in "
                     f"`labd dag {s['id']}`)", "dim")
    return 0


def _started_from(s: dict[str, Any], created: dict[str, Any]) -> str:
    """Where a session came from: the skill (name and version) it ran, or the session it branched or replayed
    (`labd tree` said only "skill", and the skill's name and version were only in `labd events`)."""
    skill = created.get("skill")
    if isinstance(skill, dict) and skill.get("name"):
        saved = f", saved from session {skill['origin_session']}" if skill.get("origin_session") else ""
        return f"skill {skill['name']} version {skill.get('version')}{saved}"
    if s.get("origin") and s.get("parent_id"):
        at = f" at {s['branch_node']}" if s.get("branch_node") else ""
        return f"{s['origin']} of session {s['parent_id']}{at}"
    return ""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "ps", cmd_ps, "list live sessions (-a: all) with pid, RSS, CPU, cost, age")
    s.add_argument("--all", "-a", action="store_true", help="include ended sessions")
    s.add_argument("--status", action="append", metavar="S", help="only these statuses (repeat or comma-separate)")
    s.add_argument("--workflow", metavar="W", help="only workflows containing W (or matching a glob: 'demo.*')")
    s.add_argument("--name", metavar="N", help="only names containing N (or matching a glob: 'lr-*')")
    s.add_argument("--since", metavar="DUR", help="only sessions created in the last DUR (30m, 2h, 1d)")
    s.add_argument("--sort", choices=sorted(SORTS), help="order the sessions listed (the newest --limit) by this: "
                   "cost, rss, cpu the most first; name, workflow, status, created (oldest first) ascending")
    s.add_argument("--tag", action="append", default=[], metavar="K=V", help="only sessions with this tag (repeat); "
                   "ended ones too, as with -a (a tag names a set of runs)")
    s.add_argument("--limit", type=_ps_limit, default=200, metavar="N", help="at most this many (newest first; "
                   "default 200; all: every matching session)")
    s.add_argument("--quiet", "-q", action="store_true", help="only ids")
    add_json(s, "a JSON array of session objects")

    s = command(sub, "show", cmd_show, "a session's status, exit reason, limits, peaks, timings, steps")
    s.add_argument("session")
    add_json(s, "the session object")
