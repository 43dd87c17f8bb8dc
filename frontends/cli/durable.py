"""Durable sessions in the CLI: ``labd resume`` of an ended session, ``labd branch``, ``labd checkpoints``.

``labd resume`` is registered by the sessions module (it unpauses a paused session); this module adds the
limit overrides and ``--reason`` to it and routes an ended session to a continuation (the daemon decides
which by the session's status, so both work through one request).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command
from labd.frontends.cli.output import counted
from labd.frontends.cli.sessions import limits_from, parse_params
from labd.frontends.cli.waits import follow, wait_all, wait_for
from labd.ipc.units import format_duration, format_size

__all__ = ["register"]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    limits = limits_from(args)
    return {k: v for k, v in limits.items() if v is not None}


def cmd_resume(args: argparse.Namespace, ctx: Ctx) -> int:
    limits = _overrides(args)
    budget = limits.pop("budget", None)
    if args.follow and args.json:
        raise CliError("--follow prints the session's activity for people; with --json, use --wait (one object at "
                       "the end) or `labd events SESSION -f --json`")
    client = ctx.client()
    before = client.session(args.session)
    # what the session recorded before this resume: --follow prints only what comes after it
    since = before["last_seq"] if args.follow else 0
    r = client.resume(args.session, budget=budget, limits=limits or None, reason=args.reason)
    _say_budget_lifted(ctx, before, budget)
    if args.wait and not args.follow:
        if not args.json:
            _say_resumed(r, budget)
        return wait_for(ctx, r["session"], args.json, announce=False, extra={"resume": r})
    if args.json:
        ctx.out.json(r)
    else:
        _say_resumed(r, budget)
    if args.follow:
        sys.stdout.flush()
        return follow(ctx, r["session"], since=since)
    return 0


def _say_budget_lifted(ctx: Ctx, before: dict[str, Any], budget: float | None) -> None:
    """A session paused by its budget and resumed without one runs on with no budget at all (the runner's rule:
    docs/design.md, "Budgets in the runner"): said on stderr, with how to keep one, as the resume did it silently."""
    old = (before.get("limits") or {}).get("budget")
    if budget is None and old is not None and before.get("status") == "paused" \
            and "budget" in str(before.get("reason") or ""):
        ctx.out.line(f"the budget of ${old:g} is lifted: the session may now spend without a limit "
                     f"(labd resume {before['id']} --budget N gives it a new one)", "yellow", err=True)


def _say_resumed(r: dict[str, Any], budget: float | None) -> None:
    if r.get("resumed"):
        print(f"{r['session']}: resumed from {r['from_status']} ({r['steps_kept']} completed steps kept)")
    elif r.get("status") not in (None, "paused", "waiting_approval") and not budget:
        print(f"session {r['session']} is not paused (status {r['status']}); a pause asked for and not reached yet "
              "is cancelled")
    else:
        print(f"resume requested for {r['session']}" + (f" with a budget of ${budget:g}" if budget else ""))


def cmd_branch(args: argparse.Namespace, ctx: Ctx) -> int:
    limits = _overrides(args)
    r = ctx.client().branch(args.session, args.from_node, hypothesis=args.hypothesis, instructions=args.instructions,
                            params=parse_params(args.param) or None, count=args.count, limits=limits or None)
    if args.json and not args.wait:
        ctx.out.json(r)
        return 0
    if not args.json:
        for s in r["sessions"]:
            print(s["session"], flush=True)
        # the node id comes from the parent's runner: shown as text on a terminal (safetext)
        print(ctx.out.safe(f"branched {len(r['sessions'])} session(s) from {r['parent']} at {r['node']}: "
                           f"{counted(r['reused'], 'completed step')} reused, {counted(r['files'], 'file')} restored",
                           err=True),
              file=sys.stderr)
    if not args.wait:
        return 0
    return wait_all(ctx, [s["session"] for s in r["sessions"]], r if args.json else None)


def cmd_checkpoints(args: argparse.Namespace, ctx: Ctx) -> int:
    cps = ctx.client().checkpoints(args.session)
    if args.json:
        ctx.out.json(cps)
        return 0
    if not cps:
        ctx.out.line("no checkpoints (the session completed no step yet, or ran without durable steps)", err=True)
        return 0
    rows = []
    for c in cps:
        if c.get("result_error"):
            result = f"(not kept: {c['result_error']})"
        elif "result_preview" in c:
            result = str(c["result_preview"])
        else:
            result = json.dumps(c.get("result_inline")) if "result_inline" in c else "-"
        new = "+" + format_size(c["new_bytes"]) if c.get("new_bytes") else "-"  # nothing new: "-", not "+-"
        rows.append([c["node_id"] or "-", c["name"], str(c["files"]), format_size(c.get("bytes") or 0), new,
                     format_duration(c.get("duration") or 0), result[:60]])
    ctx.out.table(["NODE", "STEP", "FILES", "SIZE", "NEW", "TOOK", "RESULT"], rows,
                  right=("FILES", "SIZE", "NEW", "TOOK"))
    return 0


def _limit_flags(s: argparse.ArgumentParser, *, budget: bool = True) -> None:
    s.add_argument("--memory", help="new memory limit: 512M, 2G")
    s.add_argument("--cpu", help="new CPU limit in percent of one core: 50%%")
    s.add_argument("--cpus", help="new CPU limit in cores: 0.5")
    s.add_argument("--timeout", help="new wall-time limit: 90s, 15m, 1h30m")
    if budget:
        s.add_argument("--budget", type=float, help="new LLM budget in USD")
    s.add_argument("--on-budget", choices=["stop", "pause"], help="what crossing the budget does")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    resume = sub.choices.get("resume")
    if resume is not None:  # the sessions module's `labd resume` (unpause): add the continuation's options
        resume.description = ("continue a paused session, or an ended one (failed, lost, cancelled, budget-stopped) "
                              "with a new runner from its last completed step")
        _limit_flags(resume, budget=False)
        resume.add_argument("--reason", help="why (recorded in the session's history)")
        resume.add_argument("--wait", action="store_true", help="then wait quietly until the session ends (exit "
                            "status 0 if it completed, 1 otherwise, as labd run --wait)")
        resume.add_argument("--follow", "-f", action="store_true", help="then show its output and agent activity "
                            "from the resume on, until it ends (exit status as with --wait)")
        resume.set_defaults(handler=cmd_resume)

    s = command(sub, "branch", cmd_branch, "start new sessions from a session's record up to a step")
    s.add_argument("session")
    s.add_argument("--from", dest="from_node", required=True, metavar="NODE",
                   help="the step (node id or name) to run again; the steps completed before it are reused")
    s.add_argument("--hypothesis", help="a hypothesis for the agents of the steps that run again")
    s.add_argument("--instructions", help="instructions for the agents of the steps that run again")
    s.add_argument("--param", "-p", action="append", default=[], metavar="K=V", help="change a parameter (repeat)")
    s.add_argument("--count", type=int, default=1, help="start this many branches (concurrently; default 1)")
    s.add_argument("--wait", action="store_true", help="then wait quietly until every branch has ended (exit "
                   "status 0 if all completed, 1 otherwise)")
    _limit_flags(s)
    add_json(s, "the reply")

    s = command(sub, "checkpoints", cmd_checkpoints, "a session's checkpoints (one per completed step)")
    s.add_argument("session")
    add_json(s, "a JSON array of checkpoints")
