"""Human-in-the-loop commands: approvals, approve / reject / modify / redo, resolve."""

from __future__ import annotations

import argparse

from labd.frontends.cli.base import Ctx, add_json, command
from labd.frontends.cli.output import STATUS_STYLE, age, styled

__all__ = ["register"]


def cmd_approvals(args: argparse.Namespace, ctx: Ctx) -> int:
    rows = ctx.client().approvals(args.session, status="all" if args.all else "pending")
    if args.json:
        ctx.out.json(rows)
        return 0
    if not rows:
        ctx.out.line("no pending approvals" if not args.all else "no approvals", "dim", err=True)
        return 0
    table = [[r["session_id"], r["id"], r["kind"], styled(r["status"], STATUS_STYLE.get(r["status"])),
              r["decision"] or "-", "/".join(r["options"]), age(r["requested_at"]), r["prompt"][:60]] for r in rows]
    ctx.out.table(["SESSION", "APPROVAL", "KIND", "STATUS", "DECISION", "OPTIONS", "AGE", "PROMPT"], table,
                  right=("AGE",))
    return 0


def cmd_resolve(args: argparse.Namespace, ctx: Ctx) -> int:
    decision = args.decision if args.cmd == "resolve" else args.cmd
    r = ctx.client().resolve(args.session, decision, feedback=args.feedback,
                             hypothesis=getattr(args, "hypothesis", None), approval_id=args.id)
    if args.json:
        ctx.out.json(r)
    else:
        print(ctx.out.safe(f"{r['decision']}: {r['approval_id']} ({r['session']})"))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "approvals", cmd_approvals, "approval requests (pending, across sessions)")
    s.add_argument("session", nargs="?", help="only this session")
    s.add_argument("--all", "-a", action="store_true", help="include resolved ones")
    add_json(s, "a JSON array of approval objects")
    for name, text in (("approve", "approve a session's pending request (optionally with feedback)"),
                       ("reject", "reject it, with feedback for the agents"),
                       ("modify", "approve with changes: feedback the agents must follow"),
                       ("redo", "redo the step or plan with a hypothesis to try")):
        s = command(sub, name, cmd_resolve, text)
        s.add_argument("session")
        s.add_argument("--id", help="the approval id, when a session has several pending")
        s.add_argument("--feedback", required=name == "modify", help="text for the agents")
        if name == "redo":
            s.add_argument("--hypothesis", required=True, help="what to try differently")
        add_json(s, "the reply")
    s = command(sub, "resolve", cmd_resolve, "answer a pending approval with any of its options")
    s.add_argument("session")
    s.add_argument("decision", help="one of the request's options (see labd approvals)")
    s.add_argument("--id", help="the approval id, when a session has several pending")
    s.add_argument("--feedback", help="text for the agents")
    s.add_argument("--hypothesis", help="what to try differently (for redo)")
    add_json(s, "the reply")
