"""``search``: full-text search over sessions, steps, agent messages, code, files and results."""

from __future__ import annotations

import time
from typing import Any

from labd.daemon.api.base import ApiError, Request, register
from labd.ipc.client import SEARCH_TYPES
from labd.ipc.events import STATUSES
from labd.ipc.units import UnitError, parse_duration
from labd.store.search import MAX_WORDS, QueryTooLong


@register
class Search(Request):
    type = "search"

    def execute(self) -> Any:
        text = self.arg("query", str, check=lambda s: 0 < len(s.strip()) <= 500, hint="1-500 characters")
        types = self.arg("types", list, None, check=lambda t: all(x in SEARCH_TYPES for x in t),
                         hint=f"a list of: {', '.join(SEARCH_TYPES)}")
        status = self.arg("status", list, None, check=lambda s: all(x in STATUSES for x in s),
                          hint=f"a list of statuses ({', '.join(STATUSES)})")
        workflow = self.arg("workflow", str, None, check=lambda s: 0 < len(s) <= 300, hint="a workflow name")
        since = self.arg("since", (str, int, float), None, check=lambda v: not isinstance(v, bool),
                         hint="a duration like 7d, or epoch seconds")
        limit = self.arg("limit", int, 50, check=lambda n: 0 < n <= 500, hint="1-500")
        indexer = getattr(self.daemon, "indexer", None)
        if indexer is None:
            raise ApiError("unavailable", "search is not available on this daemon")
        allowed: set[str] | None = None
        if status or workflow or since is not None:
            try:
                cutoff = time.time() - parse_duration(since) if isinstance(since, str) else since
            except UnitError as exc:
                raise ApiError("bad_request", str(exc)) from None
            rows = self.daemon.store.sessions(status=status, workflow=workflow, since=cutoff, limit=100_000)
            allowed = {r["id"] for r in rows}  # the filters are the store's query, not a pass over every row
        try:
            hits = indexer.index.search(text, types=types, session_ids=allowed, limit=limit)
        except QueryTooLong as exc:
            raise ApiError("bad_request", str(exc), {"max_words": MAX_WORDS}) from None
        names: dict[str, dict[str, Any] | None] = {}
        found = []
        for h in hits:
            sid = h["session_id"]
            if sid not in names:
                row = self.daemon.store.session(sid)
                names[sid] = None if row is None else {"name": row.get("name"), "workflow": row.get("workflow"),
                                                       "status": row.get("status")}
            about = names[sid]
            if about is None:  # deleted, and not yet dropped from the index (its indexer does that next)
                continue
            h.update({f"session_{k}": v for k, v in about.items()})
            found.append(h)
        return {"query": text, "hits": found}
