"""`labd rm` and `labd prune`: delete ended sessions (their record and their directories)."""

from __future__ import annotations

import argparse

from labd.frontends.cli.base import Ctx, add_json, comma_list, command

__all__ = ["register"]

TERMINAL = ("completed", "failed", "cancelled", "lost")


def cmd_rm(args: argparse.Namespace, ctx: Ctx) -> int:
    r = ctx.client().rm(*args.sessions)
    if args.json:
        ctx.out.json(r)
    else:
        ctx.out.line(f"deleted {len(r['deleted'])} session(s), {r['rows'].get('events', 0)} events")
    return 0


def cmd_prune(args: argparse.Namespace, ctx: Ctx) -> int:
    status = comma_list("--status", args.status, TERMINAL)
    r = ctx.client().prune(args.older_than, status=status, dry_run=args.dry_run)
    if args.json:
        ctx.out.json(r)
    elif args.dry_run:
        ctx.out.line(f"would delete {len(r['would_delete'])} session(s)")
        for sid in r["would_delete"]:
            ctx.out.line(f"  {sid}")
    else:
        ctx.out.line(f"deleted {len(r['deleted'])} session(s), {r['rows'].get('events', 0)} events")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "rm", cmd_rm, "delete ended sessions: their whole record and work directories")
    s.add_argument("sessions", nargs="+", metavar="SESSION")
    add_json(s)
    s = command(sub, "prune", cmd_prune, "delete ended sessions older than a duration (--older-than 30d)")
    s.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h, 90m; 0s = all ended")
    s.add_argument("--status", help=f"comma-separated terminal statuses (default: {','.join(TERMINAL)})")
    s.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    add_json(s)
