"""Retention requests: ``session.rm`` deletes named sessions, ``session.prune`` deletes by age and status.

Both delete the whole record of each session (events, projections, approvals, files list, costs) and its
directory. Only sessions in a terminal status are deleted; the check is made by ingest, the single writer,
so a session cannot start running between the check and the deletion.
"""

from __future__ import annotations

import re
import time
from typing import Any

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.sessions import resolve_ref
from labd.ipc.events import TERMINAL_STATUSES
from labd.ipc.units import UnitError, parse_duration
from labd.store.retention import prune_candidates

MAX_IDS = 10_000


def _deleted_reply(dry_run: bool = False, **extra: Any) -> Any:
    def fmt(sids: list[str], counts: dict[str, int]) -> dict[str, Any]:
        return {"deleted": sids, "rows": counts, "dry_run": dry_run, **extra}
    return fmt


@register
class Remove(Request):
    type = "session.rm"

    def execute(self) -> Any:
        self.only("sessions", "dry_run")  # a misspelt `dryrun` deleted (any other field is refused)
        refs = self.arg("sessions", list, check=lambda s: 0 < len(s) <= MAX_IDS and all(isinstance(x, str) for x in s),
                        hint=f"a list of 1-{MAX_IDS} session ids or names")
        dry_run = self.arg("dry_run", bool, False)
        rows: dict[str, dict[str, Any]] = {}
        for ref in refs:
            row = resolve_ref(self.daemon.store, ref)
            if row["id"] != ref and row["name"] == ref:
                _only_one_named(self.daemon.store, ref)
            if row["status"] not in TERMINAL_STATUSES and not dry_run:
                raise ApiError("not_terminal", f"session {row['id']} is {row['status']}: stop it first",
                               {"session": row["id"], "status": row["status"]})
            rows.setdefault(row["id"], row)
        if dry_run:  # resolved and checked as the deletion would be; `not_ended` are those it would refuse
            said = [{"id": r["id"], "name": r["name"], "status": r["status"]} for r in rows.values()]
            return {"deleted": [], "rows": {}, "dry_run": True, "sessions": said,
                    "would_delete": [r["id"] for r in said if r["status"] in TERMINAL_STATUSES],
                    "not_ended": [r["id"] for r in said if r["status"] not in TERMINAL_STATUSES]}
        self.daemon.delete_sessions(list(rows), self.reply_to, _deleted_reply())
        return DEFERRED


def _only_one_named(store: Any, name: str) -> None:
    """Refuse a deletion by a name several sessions share. Elsewhere a shared name means the one that runs, else the
    newest; `labd rm study` deleted the newest of three studies and said nothing of the other two, and a deletion
    cannot be taken back: the ids are given, to name the ones meant."""
    named = [r["id"] for r in store.find_session(name) if r["name"] == name]
    if len(named) > 1:
        shown = ", ".join(named[:5]) + (", ..." if len(named) > 5 else "")
        raise ApiError("ambiguous", f"{len(named)}{'+' if len(named) >= 20 else ''} sessions are named {name!r} "
                       f"({shown}); rm takes the ids of those to delete", {"matches": named})


@register
class Prune(Request):
    type = "session.prune"

    def execute(self) -> Any:
        self.only("older_than", "status", "dry_run")  # a misspelt `dryrun` or `statuses` deleted every ended session
        older = self.arg("older_than", (str, int, float), check=lambda v: not isinstance(v, bool),
                         hint="a duration like 30d or seconds")
        if isinstance(older, str) and re.fullmatch(r"\s*[0-9.]+\s*", older):
            # `labd prune --older-than 30` meant 30d and deleted everything that ended over 30 s ago: a duration
            # in text takes its unit (a number, not text, is seconds)
            raise ApiError("bad_request", f"older_than {older.strip()!r} has no unit: write 30d, 12h, 90m or 45s "
                                          "(0s: everything ended)")
        try:
            # "0s" is a fair request here (everything that has ended), though not a valid limit.
            zero = isinstance(older, str) and re.fullmatch(r"\s*0+(\.0*)?\s*[smhd]?\s*", older.lower())
            seconds = 0.0 if zero else parse_duration(older) if isinstance(older, str) else float(older)
        except UnitError as exc:
            raise ApiError("bad_request", str(exc)) from None
        if not seconds >= 0:
            raise ApiError("bad_request", "older_than must not be negative")
        statuses = self.arg("status", list, sorted(TERMINAL_STATUSES),
                            check=lambda s: bool(s) and all(x in TERMINAL_STATUSES for x in s),
                            hint=f"a list of terminal statuses ({', '.join(sorted(TERMINAL_STATUSES))})")
        dry_run = self.arg("dry_run", bool, False)
        before = time.time() - seconds
        ids = prune_candidates(self.daemon.store.engine, ended_before=before, statuses=statuses, limit=MAX_IDS + 1)
        # at most MAX_IDS a request; `more` says that others match too (it said "deleted 10000" and left the rest)
        more, ids = len(ids) > MAX_IDS, ids[:MAX_IDS]
        if dry_run or not ids:
            return {"deleted": [] if dry_run else ids, "would_delete": ids if dry_run else [], "rows": {},
                    "dry_run": dry_run, "ended_before": before, "more": more}
        self.daemon.delete_sessions(ids, self.reply_to, _deleted_reply(ended_before=before, more=more))
        return DEFERRED

