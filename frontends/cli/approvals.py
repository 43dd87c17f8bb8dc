"""Human-in-the-loop commands: approvals, approve / reject / modify / redo, resolve."""

from __future__ import annotations

import argparse
import json
from typing import Any

from labd.frontends.cli.base import Ctx, add_json, command
from labd.frontends.cli.output import STATUS_STYLE, age, styled
from labd.ipc.errors import LabdError

__all__ = ["register"]


def cmd_approvals(args: argparse.Namespace, ctx: Ctx) -> int:
    client = ctx.client()
    body: dict[str, Any] = {"status": "all" if args.all else "pending", **({"full": True} if args.full else {})}
    if args.session:  # one session's: all of them, page by page
        rows: list[dict[str, Any]] = []
        while True:
            page = client.request("approvals.list", session=args.session, **body,
                                  **({"after": rows[-1]["id"]} if rows else {}))
            rows += page["approvals"]
            if not page.get("omitted_total") or not page["approvals"]:
                break
        omitted: dict[str, int] = {}
    else:  # across sessions: the oldest few of each, and how many more each has
        page = client.request("approvals.list", **body)
        rows, omitted = page["approvals"], page.get("omitted") or {}
    if args.json:
        ctx.out.json(rows)
    elif not rows:
        ctx.out.line("no pending approvals" if not args.all else "no approvals", "dim", err=True)
    elif args.full:  # what a human must read to decide: the whole prompt and its context, not a cut table cell
        for i, r in enumerate(rows):
            _print_full(ctx, r, first=i == 0)
    else:
        table = [[r["session_id"], r["id"], r["kind"], styled(r["status"], STATUS_STYLE.get(r["status"])),
                  r["decision"] or "-", "/".join(r["options"]), age(r["requested_at"]), r["prompt"][:60]]
                 for r in rows]
        ctx.out.table(["SESSION", "APPROVAL", "KIND", "STATUS", "DECISION", "OPTIONS", "AGE", "PROMPT"], table,
                      right=("AGE",))
    for sid, n in omitted.items():  # to stderr: stdout stays the table (or the JSON array)
        ctx.out.line(f"{sid}: {n} more {'pending' if not args.all else 'approvals'} not shown "
                     f"(labd approvals {sid})", "dim", err=True)
    if page.get("omitted_total", 0) > sum(omitted.values()) and not args.session:
        ctx.out.line(f"{page['omitted_total'] - sum(omitted.values())} more in other sessions", "dim", err=True)
    return 0


def _print_full(ctx: Ctx, r: dict[str, Any], first: bool) -> None:
    """One approval as a block: its header line, then its whole prompt and its context (indented JSON)."""
    if not first:
        ctx.out.line("")
    decided = f"  {r['decision']}" if r["decision"] else ""
    ctx.out.line(f"{r['session_id']}  {r['id']}  {r['kind']}  {r['status']}{decided}  "
                 f"[{'/'.join(r['options'])}]  {age(r['requested_at'])} ago", "bold")
    for line in (r["prompt"] or "").splitlines() or [""]:
        ctx.out.line(f"  {line}")
    if r.get("context"):
        ctx.out.line("  context:", "dim")
        for line in json.dumps(r["context"], indent=2, ensure_ascii=False, default=str).splitlines():
            ctx.out.line(f"    {line}")
    if r.get("feedback"):
        ctx.out.line(f"  feedback: {r['feedback']}", "dim")


def cmd_resolve(args: argparse.Namespace, ctx: Ctx) -> int:
    decision = args.decision if args.cmd == "resolve" else args.cmd
    try:
        r = ctx.client().resolve(args.session, decision, feedback=args.feedback,
                                 hypothesis=getattr(args, "hypothesis", None), approval_id=args.id)
    except LabdError as exc:
        if exc.code == "bad_decision" and args.cmd != "resolve":  # a request with options of its own
            raise LabdError(exc.code, f"{exc.message}; answer it with labd resolve {args.session} OPTION"
                                      f"{' --id ' + args.id if args.id else ''}", exc.details) from None
        if exc.code == "bad_request" and exc.details.get("field") == "feedback" and not args.feedback:
            raise LabdError(exc.code, f"{exc.message}: labd {args.cmd} {args.session} --feedback \"...\"",
                            exc.details) from None
        raise
    if args.json:
        ctx.out.json(r)
    else:
        print(ctx.out.safe(f"{r['decision']}: {r['approval_id']} ({r['session']})"))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "approvals", cmd_approvals, "approval requests (pending, across sessions)")
    s.add_argument("session", nargs="?", help="only this session")
    s.add_argument("--all", "-a", action="store_true", help="include resolved ones")
    s.add_argument("--full", action="store_true",
                   help="each approval as a block: its whole prompt and context (the list cuts them)")
    add_json(s, "a JSON array of approval objects")
    for name, text in (("approve", "approve a session's pending request (optionally with feedback)"),
                       ("reject", "reject it, with feedback for the agents"),
                       ("modify", "approve with changes: feedback the agents must follow"),
                       ("redo", "redo the step or plan with a hypothesis to try")):
        s = command(sub, name, cmd_resolve, text)
        s.add_argument("session")
        s.add_argument("--id", help="the approval id, when a session has several pending")
        # not required here: the daemon refuses a modify without feedback, for every client alike (bad_request)
        s.add_argument("--feedback", help="text for the agents" + (" (required: what to change)"
                                                                   if name == "modify" else ""))
        if name == "redo":
            s.add_argument("--hypothesis", required=True, help="what to try differently")
        add_json(s, "the reply")
    s = command(sub, "resolve", cmd_resolve, "answer a pending approval with any of its options")
    s.add_argument("session")
    s.add_argument("decision", help="one of the request's options (see labd approvals)")
    s.add_argument("--id", help="the approval id, when a session has several pending")
    s.add_argument("--feedback", help="text for the agents (required for modify)")
    s.add_argument("--hypothesis", help="what to try differently (for redo)")
    add_json(s, "the reply")
