"""`labd search TEXT`: find sessions, steps, agent messages, code, files, results and errors by the words in them."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from labd.frontends.cli.base import Ctx, add_json, comma_list, command
from labd.ipc.client import SEARCH_TYPES as TYPES
from labd.ipc.events import STATUSES

__all__ = ["register"]


def register(sub: Any) -> None:
    s = command(sub, "search", cmd_search,
                "full-text search: tasks, step names, agent messages, code, files, results, errors")
    s.add_argument("query", nargs="+", help="words (all must match; prefixes match too; at most 20 different ones)")
    s.add_argument("--type", help=f"comma-separated: {','.join(TYPES)}")
    s.add_argument("--status", help="comma-separated session statuses")
    s.add_argument("--workflow", help="only sessions of this workflow (as `labd ps` shows it)")
    s.add_argument("--since", help="only sessions created within this duration, e.g. 7d")
    s.add_argument("--limit", type=int, default=30, help="show at most this many hits, best first (default 30, "
                   "at most 500)")
    add_json(s, "the hits as JSON")


def cmd_search(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    types, status = comma_list("--type", args.type, TYPES), comma_list("--status", args.status, STATUSES)
    hits = c.search(" ".join(args.query), types=types, status=status, workflow=args.workflow,
                    since=args.since, limit=args.limit)
    if args.json:
        ctx.out.json(hits)
        return 0
    if not hits:
        ctx.out.line("no matches")
        return 0
    for h in hits:
        when = datetime.fromtimestamp(h["ts"]).strftime("%Y-%m-%d %H:%M")
        where = f"{h['session_id']} {h['session_name'] or ''}".strip() + (f" {h['node_id']}" if h["node_id"] else "")
        ctx.out.line(f"{when}  {h['type']:<8} {where}  [{h['session_status']}]")
        ctx.out.line(f"    {h['title'][:80]}: {' '.join(h['snippet'].split())[:160]}")
    if len(hits) >= args.limit:  # there may be more: say so rather than let the list look complete
        ctx.out.line(f"(the best {len(hits)} hits; more may match: --limit N shows up to 500)", err=True)
    return 0
