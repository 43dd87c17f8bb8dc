"""`labd replay`, `labd compare`, `labd tree`: re-run a session from its record, sessions side by side,
and a session's family (branches, replays, skill runs)."""

from __future__ import annotations

import argparse
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command, last_line
from labd.frontends.cli.interrupt import ctrl_c
from labd.frontends.cli.output import short
from labd.frontends.cli.safetext import one_line
from labd.ipc.family import family_tree

__all__ = ["register"]


def _money(v: Any) -> str:
    return f"${float(v or 0):.4f}"


def _secs(v: Any) -> str:
    return f"{v:.1f}s" if isinstance(v, int | float) else "-"


def cmd_replay(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client(timeout=60.0)  # the seed of a long session takes a moment to build
    try:
        sid = c.replay(args.session, from_node=args.from_node, name=args.name)
    except KeyboardInterrupt:  # the request is with the daemon, which goes on with it: say so, not nothing
        ctx.out.line("\nlabd replay: interrupted before the daemon answered: the replay may start all the same. "
                     "`labd ps` shows it once it does (`labd stop ID` stops it).", "bold yellow", err=True)
        return 130
    if not args.wait:
        ctx.out.json({"session": sid}) if args.json else ctx.out.line(sid)
        return 0
    if not args.json:  # its id at once, as `labd run --wait` does: a Ctrl-C or a lost terminal keeps it known
        ctx.out.line(f"== replay session {sid} (Ctrl-C detaches; the replay keeps running)", "bold", err=True)
    try:
        with ctrl_c() as pressed:
            final = c.wait(sid)
            pressed.check()  # a press whose KeyboardInterrupt a finalizer swallowed
    except KeyboardInterrupt:  # the replay is a session of its own: say which, or its id is lost
        ctx.out.line(f"\n== detached: replay session {sid} keeps running. Stop it with `labd stop {sid}`; "
                     f"follow it with `labd logs -f {sid}`.", "bold yellow", err=True)
        return 130
    events = list(c.history(sid, kinds=["replay.miss", "replay.diverged", "llm.response", "approval.replayed"]))
    divergences = [e for e in events if e["kind"] in ("replay.miss", "replay.diverged")]
    served = sum(1 for e in events if e["kind"] == "approval.replayed"
                 or (e["kind"] == "llm.response" and e["payload"].get("replayed")))
    if args.json:
        ctx.out.json({"session": sid, "status": final["status"], "reason": final.get("reason"),
                      "cost": final.get("cost"), "served": served,
                      "divergences": [{"kind": e["kind"], "node_id": e["node_id"], **e["payload"]}
                                      for e in divergences]})
    else:
        ctx.out.fields([("session", sid), ("status", final["status"]), ("reason", final.get("reason") or ""),
                        ("served from the record", str(served)), ("cost", _money(final.get("cost")))])
        if divergences:
            _first_divergence(ctx, divergences[0])
    return 0 if final["status"] == "completed" else 1


def _first_divergence(ctx: Ctx, e: dict[str, Any]) -> None:
    m = e["payload"]
    if e["kind"] == "replay.diverged":
        has = f"the record has {m['expected']!r}" if m.get("expected") else "the record has no such step"
        ctx.out.line(f"first divergence: node {e['node_id']} is step {m['name']!r}, {has}", "red")
        return
    exp = m.get("expected") or {}
    wanted = f"; the record expected {exp.get('what')} in node {exp.get('node')}" if exp else ""
    ctx.out.line(f"first divergence: node {e['node_id']} made a {m['what']} request ({m['digest'][:12]}) the record "
                 f"does not have{wanted}", "red")
    if m.get("input"):
        ctx.out.line("  asked:    " + last_line(m["input"])[:160])
    if exp.get("input"):
        ctx.out.line("  recorded: " + last_line(exp["input"])[:160])
    if m.get("differs"):  # the input may read the same: the request differs elsewhere (its system prompt, say)
        ctx.out.line("  differs in: " + ", ".join(PART_NAMES.get(k, k) for k in m["differs"]))


#: a request's parts (runner/replay.REQUEST_PARTS) as a user knows them
PART_NAMES = {"system": "the system prompt", "messages": "the messages", "tools": "the tools",
              "params": "the model parameters", "response_schema": "the response schema"}


def _input_rows(inputs: dict[str, Any]) -> list[list[str]]:
    """Rows for what the sessions were started with where they differ (workflow, each param, a branch's
    hypothesis and instructions), one line each, cut to fit."""
    rows = [[field, *[short(v, 40) if v is not None else "-" for v in inputs[field]]]
            for field in ("workflow", "hypothesis", "instructions") if field in inputs]
    rows += [[f"-p {name}", *[short(v, 40) if v is not None else "(default)" for v in values]]
             for name, values in (inputs.get("params") or {}).items()]
    return rows


def cmd_compare(args: argparse.Namespace, ctx: Ctx) -> int:
    if len(args.sessions) < 2:
        raise CliError("compare needs at least two sessions: labd compare A B [C ...]")
    r = ctx.client(timeout=60.0).compare(*args.sessions)
    if args.json:
        ctx.out.json(r)
        return 0
    ids = r["sessions"]
    ctx.out.table(["", *ids], [
        ["name", *[t["name"] for t in r["totals"]]],
        ["status", *[t["status"] for t in r["totals"]]],
        ["origin", *[t.get("origin") or "" for t in r["totals"]]],
        *_input_rows(r.get("inputs") or {}),
        ["duration", *[_secs(t["duration"]) for t in r["totals"]]],
        ["LLM calls", *[str(t["calls"]) for t in r["totals"]]],
        ["tokens", *[str(t["prompt_tokens"] + t["completion_tokens"]) for t in r["totals"]]],
        ["cost", *[_money(t["cost"]) for t in r["totals"]]],
        *([["superseded", *[str(t.get("superseded") or 0) for t in r["totals"]]]]
          if any(t.get("superseded") for t in r["totals"]) else []),
    ])
    if any(t.get("superseded") for t in r["totals"]):
        ctx.out.line("superseded: steps a resume ran again; their unfinished attempts are not compared")
    ctx.out.line("")
    rows = []
    for s in r["steps"]:
        cells = [f"{c['status']} {_secs(c['duration'])} {c['calls']} calls" + (" (reused)" if c.get("reused") else "")
                 if c else "(absent)" for c in s["sessions"]]
        rows.append([("* " if s["changed"] else "  ") + s["name"][:60], *cells, ", ".join(s["changed"])])
    ctx.out.table(["STEP", *ids, "CHANGED"], rows)
    for s in r["steps"]:
        for d in s.get("result_diff") or []:
            if d:
                ctx.out.line(f"\nresult of {s['name']}:")
                ctx.out.line(d)
    changed = [f for f in r["files"] if f["differs"]]
    ctx.out.line("")
    if not r["files"]:
        ctx.out.line("files: none")
    elif not changed:
        ctx.out.line(f"files: {len(r['files'])}, all the same")
    else:
        ctx.out.table(["FILE", *ids[1:]], [[one_line(f["path"]), *f["states"]] for f in changed])
        for f in changed:
            for d in f.get("diffs") or []:
                if d:
                    ctx.out.line("")
                    ctx.out.line(d)
    res = r["result"]
    ctx.out.line("\nfinal result: " + ("the same" if res["same"] else "differs"))
    for d in res["diffs"]:
        if d:
            ctx.out.line(d)
    return 0


def _label(node: dict[str, Any], mark: str) -> str:
    label = f"{node['id']}  {node['name']}  [{node['status']}]"
    if node.get("origin"):
        label += f"  {node['origin']}" + (f" from {node['branch_node']}" if node.get("branch_node") else "")
    if node.get("resumes"):
        label += f"  resumed {node['resumes']}x"
    if node["id"] == mark:
        label += "  <"
    return label


def _tree_lines(root: dict[str, Any], mark: str) -> list[str]:
    """The family tree as text lines, depth first, children in their order (``mark``: the session asked about).

    Iterative, with an explicit stack: a chain of branches of branches is as deep as it is long, and recursion
    raised RecursionError past ~1,000 generations."""
    out = [_label(root, mark)]
    stack: list[tuple[dict[str, Any], str, bool]] = []  # (node, its line's prefix, last of its parent's children)

    def push(kids: list[dict[str, Any]], prefix: str) -> None:  # last child first, so that they pop in order
        stack.extend((k, prefix, i == len(kids) - 1) for i, k in reversed(list(enumerate(kids))))

    push(root.get("children") or [], "")  # the root's children start at the left margin
    while stack:
        node, prefix, last = stack.pop()
        out.append(f"{prefix}{'`-- ' if last else '|-- '}{_label(node, mark)}")
        push(node.get("children") or [], prefix + ("    " if last else "|   "))
    return out


def cmd_tree(args: argparse.Namespace, ctx: Ctx) -> int:
    r = ctx.client().tree(args.session)
    if args.json:
        ctx.out.json(r)
        return 0
    for line in _tree_lines(family_tree(r), r["session"]):  # nested, or flat for a family too deep to nest
        ctx.out.line(line)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "replay", cmd_replay, "re-run a finished session with every LLM response and approval served "
                "from its record ($0), up to a node then live", epilog="examples:\n  labd replay 3f2a --wait\n"
                "  labd replay 3f2a --from n7        served up to the end of node n7, then the model answers")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--from", dest="from_node", metavar="NODE",
                   help="serve the record up to the end of this node (see labd dag), then go live")
    p.add_argument("--name", help="the new session's name")
    p.add_argument("--wait", action="store_true", help="wait for the replay to end; report the first divergence")
    add_json(p)
    p = command(sub, "compare", cmd_compare, "sessions side by side: steps, results, files, totals",
                epilog="examples:\n  labd compare 3f2a 9c1d\n  labd compare 3f2a 9c1d 77ab --json")
    p.add_argument("sessions", nargs="+", metavar="SESSION", help="two or more; the first is the baseline")
    add_json(p)
    p = command(sub, "tree", cmd_tree, "a session's family: its root, branches, replays and skill runs")
    p.add_argument("session", metavar="SESSION")
    add_json(p)
