"""`labd rm` and `labd prune`: delete ended sessions (their record and their directories)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from labd.frontends.cli.base import Ctx, add_json, comma_list, command

__all__ = ["register"]

TERMINAL = ("completed", "failed", "cancelled", "lost")


def cmd_rm(args: argparse.Namespace, ctx: Ctx) -> int:
    if args.dry_run:
        return _rm_dry_run(args, ctx)
    r = ctx.client().rm(*args.sessions)
    if args.json:
        ctx.out.json(r)
    else:
        ctx.out.line(f"deleted {len(r['deleted'])} session(s), {r['rows'].get('events', 0)} events")
    return 0


def _rm_dry_run(args: argparse.Namespace, ctx: Ctx) -> int:
    """``labd rm --dry-run``: the sessions the references name (resolved as ``rm`` resolves them: id, prefix or
    name), which of them would be deleted and which have not ended (``rm`` refuses those); deletes nothing."""
    rows = ctx.client().rm(*args.sessions, dry_run=True)["sessions"]
    gone = [row for row in rows if row["status"] in TERMINAL]
    live = [row for row in rows if row["status"] not in TERMINAL]
    if args.json:
        ctx.out.json({"would_delete": [r["id"] for r in gone], "not_ended": [r["id"] for r in live]})
    else:
        ctx.out.line(f"would delete {len(gone)} session(s)")
        for row in gone:
            ctx.out.line(f"  {row['id']}  {ctx.out.safe(row['name'])}  {row['status']}")
        for row in live:
            ctx.out.line(f"not ended, rm would refuse it: {row['id']}  {ctx.out.safe(row['name'])}  {row['status']} "
                         f"(labd stop {row['id']} first)", "yellow", err=True)
    return 2 if live else 0


def cmd_prune(args: argparse.Namespace, ctx: Ctx) -> int:
    status = comma_list("--status", args.status, TERMINAL)
    r = ctx.client().prune(args.older_than, status=status, dry_run=args.dry_run)
    if args.json:
        ctx.out.json(r)
    elif args.dry_run:
        ctx.out.line(f"would delete {len(r['would_delete'])} session(s) that ended before {_when(r)}")
        for sid in r["would_delete"]:
            ctx.out.line(f"  {sid}")
    else:
        ctx.out.line(f"deleted {len(r['deleted'])} session(s) that ended before {_when(r)}, "
                     f"{r['rows'].get('events', 0)} events")
    if r.get("more") and not args.json:  # one request deletes at most 10,000
        ctx.out.line("more sessions match: run the same command again for the next 10,000", "yellow", err=True)
    return 0


def _when(reply: dict[str, Any]) -> str:
    """The prune's cutoff, local time (a daemon from before it was sent: "the cutoff")."""
    before = reply.get("ended_before")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before)) if isinstance(before, int | float) \
        else "the cutoff"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "rm", cmd_rm, "delete ended sessions: their whole record and work directories")
    s.add_argument("sessions", nargs="+", metavar="SESSION")
    s.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing (exit 2 if "
                   "one has not ended: rm would refuse it)")
    add_json(s)
    s = command(sub, "prune", cmd_prune, "delete ended sessions older than a duration (--older-than 30d)")
    s.add_argument("--older-than", required=True, metavar="DURATION",
                   help="with its unit: 30d, 12h, 90m, 45s; 0s = all ended (a bare number is refused)")
    s.add_argument("--status", help=f"comma-separated terminal statuses (default: {','.join(TERMINAL)})")
    s.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    add_json(s)
