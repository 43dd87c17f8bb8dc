"""`labd rm` and `labd prune`: delete ended sessions (their record and their directories)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from labd.ipc.client import Client

TERMINAL = ["completed", "failed", "cancelled", "lost"]


def register(sub: Any) -> dict[str, Any]:
    """Add the subcommands; returns their handlers by name."""
    s = sub.add_parser("rm", help="delete ended sessions: their whole record and work directories")
    s.add_argument("sessions", nargs="+", metavar="SESSION")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("prune", help="delete ended sessions older than a duration (e.g. 30d)")
    s.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h, 90m")
    s.add_argument("--status", help=f"comma-separated terminal statuses (default: {','.join(TERMINAL)})")
    s.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    s.add_argument("--json", action="store_true")
    return {"rm": cmd_rm, "prune": cmd_prune}


def cmd_rm(args: argparse.Namespace, c: Client) -> int:
    r = c.rm(*args.sessions)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"deleted {len(r['deleted'])} session(s), {r['rows'].get('events', 0)} events")
    return 0


def cmd_prune(args: argparse.Namespace, c: Client) -> int:
    status = [s.strip() for s in args.status.split(",") if s.strip()] if args.status else None
    r = c.prune(args.older_than, status=status, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(r))
    elif args.dry_run:
        print(f"would delete {len(r['would_delete'])} session(s)")
        for sid in r["would_delete"]:
            print(f"  {sid}")
    else:
        print(f"deleted {len(r['deleted'])} session(s), {r['rows'].get('events', 0)} events")
    return 0
