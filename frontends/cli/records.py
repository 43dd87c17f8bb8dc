"""What a session's record holds: its step graph (dag), LLM cost, files, state history, and result."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command, duration
from labd.frontends.cli.output import STATUS_STYLE, natural_key, styled
from labd.frontends.cli.safetext import one_line
from labd.ipc.units import UnitError, format_duration, format_size, parse_duration

__all__ = ["register", "tree_lines"]


def _node_text(n: dict[str, Any]) -> str:
    bits = [f"{n['node_id']} {n['name']}"]
    if n.get("kind") and n["kind"] != "step":
        bits.append(f"({n['kind']})")
    bits.append(f"· {n['status']}")
    if n.get("duration") is not None:
        bits.append(f"· {format_duration(n['duration'])}")
    if n.get("redo_of"):
        bits.append(f"· redo of {n['redo_of']}")
    if n.get("error"):
        bits.append(f"· {' '.join(str(n['error']).split())[:100]}")
    return " ".join(bits)


def _children(dag: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Roots and children by parent, each in recorded order; parents from ``parent_node`` or contains-edges."""
    nodes = {n["node_id"]: n for n in dag["nodes"]}
    parent = {n["node_id"]: n.get("parent_node") for n in dag["nodes"]}
    for e in dag.get("edges", []):
        if e["type"] == "contains" and not parent.get(e["dst"]):
            parent[e["dst"]] = e["src"]
    kids: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for nid, n in nodes.items():
        p = parent.get(nid)
        if p and p in nodes and p != nid:
            kids.setdefault(p, []).append(n)
        else:
            roots.append(n)
    return roots, kids


def tree_lines(dag: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(prefix + text, node)`` per node, drawn as a tree with box characters. Walked with a stack of its own, not
    by recursion: steps nested thousands deep (a session's record is whatever its code did) are drawn too."""
    roots, kids = _children(dag)
    seen: set[str] = set()
    # (node, the prefix of its line, last among its siblings, a root), the next to draw on top
    stack: list[tuple[dict[str, Any], str, bool, bool]] = [(r, "", True, True) for r in reversed(roots)]
    while stack:
        n, prefix, last, top = stack.pop()
        if n["node_id"] in seen:  # a cycle in a damaged record must not hang the CLI
            continue
        seen.add(n["node_id"])
        branch = "" if top else ("└── " if last else "├── ")
        yield prefix + branch + _node_text(n), n
        inner = prefix + ("" if top else ("    " if last else "│   "))
        children = kids.get(n["node_id"], [])
        stack.extend((child, inner, i == len(children) - 1, False) for i, child in reversed(list(enumerate(children))))


def cmd_dag(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    fmt = "json" if args.format == "tree" else args.format
    reply = c.dag(args.session, fmt, newest=args.newest)
    omitted = reply.get("nodes_omitted") or 0
    if args.format == "json":  # the graph itself (the reply carries it once, not also as text)
        dag = {**reply["dag"], "nodes_omitted": omitted} if omitted else reply["dag"]
        print(ctx.out.safe(json.dumps(dag, indent=2, default=str)))
    elif args.format != "tree":
        print(ctx.out.safe(reply["text"]), end="")  # step names are the session's
    elif not reply["dag"]["nodes"]:
        ctx.out.line(f"session {reply['dag']['session']} has no steps yet", "dim", err=True)
    else:
        for text, n in tree_lines(reply["dag"]):
            ctx.out.line(text, STATUS_STYLE.get(n["status"]))
    if omitted:
        older = "1 older one" if omitted == 1 else f"{omitted} older ones"
        ctx.out.line(f"(the newest {args.newest} nodes; {older} left out: without --newest, all)", "dim", err=True)
    return 0


def _newest(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of nodes, 1 to 100000, not {text!r}") from None
    if not 1 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"a number of nodes, 1 to 100000, not {n}")
    return n


def cmd_cost(args: argparse.Namespace, ctx: Ctx) -> int:
    if args.all and args.session:
        raise CliError(f"cost takes a SESSION or --all, not both (labd cost {args.session}; labd cost --all)")
    if not args.all and (args.by or args.since):  # one session's cost is by agent, model, node and step at once
        raise CliError("--by and --since go with --all (labd cost --all --by workflow --since 7d)")
    args.by = args.by or "model"
    if args.all:
        since = None
        if args.since:
            try:
                since = max(time.time() - parse_duration(args.since), 0.0)  # before 1970: every session
            except UnitError as exc:
                raise CliError(f"--since: {exc}") from None
        s = ctx.client().cost_summary(by=args.by, since=since)
        if args.json:
            ctx.out.json(s)
            return 0
        t = s["total"]
        # sessions that made LLM calls: ones that made none have no cost record to count
        noun = "session" if t["sessions"] == 1 else "sessions"
        print(f"{t['sessions']} {noun} with LLM calls: ${t['cost']:.6f} for {t['calls']} calls, "
              f"{t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens")
        # by session, each row is one session: a SESSIONS column would read 1 on every row
        per_session = args.by == "session"
        sums = ["CALLS", "PROMPT", "COMPLETION", "COST"] if per_session else ["SESSIONS", "CALLS", "PROMPT",
                                                                             "COMPLETION", "COST"]
        ctx.out.table([args.by.upper(), *sums],
                      [[str(g[args.by]), *([] if per_session else [str(g["sessions"])]), str(g["calls"]),
                        str(g["prompt_tokens"]), str(g["completion_tokens"]), f"${g['cost']:.6f}"]
                       for g in s["groups"]],
                      right=tuple(sums))
        return 0
    if not args.session:
        raise CliError("cost needs a SESSION, or --all")
    r = ctx.client().cost(args.session, calls=args.json)  # the tables need the sums only, not every call
    if args.json:
        ctx.out.json(r)
        return 0
    t = r["total"]
    label = " (offline scripted model: nominal prices)" if t["offline"] else ""
    print(f"session {r['session']}: ${t['cost']:.6f} for {t['calls']} LLM calls, "
          f"{t['prompt_tokens']} prompt + {t['completion_tokens']} completion tokens{label}"
          + (f"; budget ${r['budget']:g}" if r.get("budget") else ""))
    # one table per grouping; steps by node, in the order they ran: a name recurs (a resume runs its failed step
    # again as a new node, a loop repeats a step), so each step row carries its node id as well
    for key, cols, titles in (("by_agent", ("agent",), ("AGENT",)), ("by_model", ("model",), ("MODEL",)),
                              ("by_node", ("node_id",), ("NODE",)), ("by_step", ("node_id", "name"), ("NODE", "STEP"))):
        if key not in r:
            continue
        groups = sorted(r[key], key=lambda g, col=cols[0]: natural_key(g[col]))  # type: ignore[misc]  # bound per loop
        rows = [[*(str(g[c]) for c in cols), str(g["calls"]), str(g["prompt_tokens"]), str(g["completion_tokens"]),
                 f"${g['cost']:.6f}"] for g in groups]
        print()
        ctx.out.table([*titles, "CALLS", "PROMPT", "COMPLETION", "COST"], rows,
                      right=("CALLS", "PROMPT", "COMPLETION", "COST"))
    return 0


def cmd_files(args: argparse.Namespace, ctx: Ctx) -> int:
    rows = ctx.client().files(args.session)
    if args.json:
        ctx.out.json(rows)
        return 0
    table = [[one_line(f["path"]), f["change"], format_size(f["size"]) if f["size"] else "0B", f["kind"],
              f["sha256"][:12], _file_step(f), f["agent"] or "-", f["tool"] or "-"] for f in rows]
    ctx.out.table(["PATH", "CHANGE", "SIZE", "KIND", "SHA256", "STEP", "AGENT", "TOOL"], table, right=("SIZE",))
    return 0


def _file_step(f: dict[str, Any]) -> str:
    """The STEP cell of a file row: the step that wrote it, or ``(restored)`` for a file a resume's or branch's restore
    of a checkpoint put in place (no step wrote it in this run)."""
    if f.get("restored"):
        return f"{f['step']} (restored)" if f.get("step") else "(restored)"
    return f["step"] or "-"


def cmd_history(args: argparse.Namespace, ctx: Ctx) -> int:
    rows = ctx.client().state_history(args.session)
    if args.json:
        ctx.out.json(rows)
        return 0
    table = [[datetime.fromtimestamp(h["ts"]).strftime("%H:%M:%S.%f")[:-3],
              f"step {h['node_id']}" if h["node_id"] else "session", h["from_status"] or "-",
              styled(h["to_status"], STATUS_STYLE.get(h["to_status"])), h["actor"], h["reason"] or ""]
             for h in rows]
    ctx.out.table(["TIME", "WHAT", "FROM", "TO", "BY", "REASON"], table)
    return 0


def cmd_result(args: argparse.Namespace, ctx: Ctx) -> int:
    """What a session returned, once it has ended (it waits for a running one). A workflow's JSON value: a string
    as it is, anything else as JSON (``--json``: always JSON). A submitted function's pickled value is shown by the
    repr its runner recorded, never unpickled: unpickling runs code, which a command showing a result must not.
    A session that did not complete: why on stderr (a function's remote traceback too), exit 1."""
    from labd.frontends.cli.interrupt import ctrl_c
    from labd.frontends.cli.waits import see_restarts_through
    from labd.ipc.functions import FUNCTION_WORKFLOW, RESULT_KEY, remote_error, result_missing

    client = ctx.client()
    see_restarts_through(client)
    try:
        with ctrl_c():
            end = client.outcome(args.session, args.timeout)
    except KeyboardInterrupt:
        ctx.out.line(f"\n== detached: session {args.session} keeps running; `labd result {args.session}` again "
                     "shows its result once it has ended.", "bold yellow", err=True)
        return 130
    row, finished = end["session"], end["finished"]
    sid = row["id"]
    # only a submitted function's runner pickles its result: another workflow's dict shaped so is its own JSON
    function = row["workflow"] == FUNCTION_WORKFLOW
    if row["status"] == "completed" and finished is not None and not result_missing(finished):
        value = finished.get("result")
        if args.json:
            ctx.out.json(value)
        elif function and isinstance(value, dict) and isinstance(value.get(RESULT_KEY), str):
            ctx.out.line(str(value.get("repr") or ""))
            size = value.get("size")  # what the runner recorded
            sized = isinstance(size, int) and not isinstance(size, bool) and size >= 0
            of = f" of {format_size(size)}" if sized else ""
            ctx.out.line(f"(a pickled {str(value.get('type') or 'value')[:200]}{of}, shown by its repr: labd does not "
                         "unpickle it here, as unpickling runs code; in Python: "
                         f"labd.Client().result({sid!r}))", "dim", err=True)
        else:
            ctx.out.line(value if isinstance(value, str) else json.dumps(value, indent=2))
        return 0
    # the remote exception's text and traceback, not its pickled object (loading it would run the session's code)
    error = {k: v for k, v in end["error"].items() if k != "pickle"} if end["error"] else None
    why = remote_error(row, finished, error)
    if args.json:
        ctx.out.json({"session": sid, "status": row["status"], "reason": row.get("reason"),
                      "error": {"type": why.type_name, "message": why.message, "traceback": why.traceback or None}})
    elif why.type_name in ("SessionEnded", "Cancelled", "ResultMissing"):  # these say the session's end already
        ctx.out.line(why.message, "bold red", err=True)
    else:
        ctx.out.line(f"session {sid} ended {row['status']}: {why}", "bold red", err=True)
    return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "dag", cmd_dag, "a session's step graph: a tree in the terminal, or json / mermaid / dot")
    s.add_argument("session")
    s.add_argument("--format", choices=["tree", "json", "mermaid", "dot"], default="tree",
                   help="tree (default), json, mermaid or dot")
    s.add_argument("--newest", type=_newest, metavar="N",
                   help="only the newest N nodes (1-100000) and the edges between them: a days-long session's "
                        "whole graph has many thousands")
    s = command(sub, "cost", cmd_cost, "a session's LLM cost per agent, model, node and step (or --all sessions)")
    s.add_argument("session", nargs="?")
    s.add_argument("--all", action="store_true", help="cost across all sessions")
    s.add_argument("--by", choices=["model", "workflow", "tag", "day", "session"],
                   help="with --all: group by this (default model)")
    s.add_argument("--since", help="with --all: only calls in the last 7d / 12h / 30m")
    add_json(s, "the cost object (total, by_agent, by_model, by_node, calls)")
    s = command(sub, "files", cmd_files, "files a session produced, with the step and agent that wrote them")
    s.add_argument("session")
    add_json(s, "a JSON array of file objects")
    s = command(sub, "result", cmd_result, "what a session returned (waits for it to end)",
                epilog="a string is printed as it is, anything else as JSON; a submitted function's pickled value by "
                       "its recorded repr (never unpickled here). Exit status: 0 completed, 1 otherwise (why on "
                       "stderr), 2 on a timeout or an error (no such session: the message says which), 130 on Ctrl-C "
                       "(the session keeps running)")
    s.add_argument("session")
    s.add_argument("--timeout", type=duration, default=None, help="give up after this long: 30s, 5m (default: none)")
    add_json(s, "the result as JSON (a pickled one as recorded); for a session that did not complete, "
                "{session, status, reason, error}")
    s = command(sub, "history", cmd_history, "a session's state transitions (who, why, when)")
    s.add_argument("session")
    add_json(s, "a JSON array of transitions (ts, node_id, from_status, to_status, actor, reason, seq)")
