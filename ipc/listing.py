"""The SDK's session listing (mixed into :class:`~labd.ipc.client.Client`): one page of ``session.list``
(docs/protocol.md), or every matching session read a page at a time, keyset-paged by the daemon's ``next`` cursor so
that sessions created or deleted between pages neither shift nor repeat a page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from labd.ipc.errors import LabdError

__all__ = ["Listing", "MAX_LIST"]

#: the most sessions one ``session.list`` reply holds
MAX_LIST = 10_000


class Listing:
    """Session listing calls of :class:`~labd.ipc.client.Client`."""

    def request(self, type_: str, **body: Any) -> Any:  # provided by Client
        raise NotImplementedError

    def sessions(self, status: list[str] | None = None, limit: int = 200, *, workflow: str | None = None,
                 tags: dict[str, str] | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Sessions newest first, filtered by status, exact workflow, tags (all must match), created since: at most
        ``limit`` (1-10000) of them; :meth:`sessions_page` says whether there are more, :meth:`iter_sessions` reads
        them all."""
        return self.sessions_page(status, limit, workflow=workflow, tags=tags, since=since)["sessions"]

    def sessions_page(self, status: list[str] | None = None, limit: int = 200, *, workflow: str | None = None,
                      tags: dict[str, str] | None = None, since: float | None = None,
                      before: str | None = None) -> dict[str, Any]:
        """One page of :meth:`sessions`: ``{sessions, more, next}``. ``more``: sessions past this page match too;
        ``next``: the ``before`` that reads the next page (with the same filters)."""
        body: dict[str, Any] = {"limit": limit}
        if status:
            body["status"] = status
        if workflow:
            body["workflow"] = workflow
        if tags:
            body["tags"] = tags
        if since is not None:
            body["since"] = since
        if before is not None:
            body["before"] = before
        reply = self.request("session.list", **body)
        # a daemon before `more` gave none: a page cut at its limit may then have more
        reply.setdefault("more", len(reply["sessions"]) >= limit)
        reply.setdefault("next", None)
        return reply  # type: ignore[no-any-return]

    def iter_sessions(self, status: list[str] | None = None, *, workflow: str | None = None,
                      tags: dict[str, str] | None = None, since: float | None = None,
                      page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every matching session, newest first, read a page (``page`` sessions, 1-10000) at a time: a session
        created meanwhile is not listed (it is newer than the first page), and one deleted meanwhile may be. From a
        daemon older than paging (no ``next``): its newest 10,000, then :class:`LabdError` ``list_incomplete`` if
        more match (a list cut short must not look whole)."""
        before: str | None = None
        filters: dict[str, Any] = {"workflow": workflow, "tags": tags, "since": since}
        while True:
            got = self.sessions_page(status, page, before=before, **filters)
            yield from got["sessions"]
            if not got["more"]:
                return
            if not got["next"]:  # an older daemon: one page of at most 10,000 is all it can give
                seen = {r["id"] for r in got["sessions"]}
                if page < MAX_LIST:
                    got = self.sessions_page(status, MAX_LIST, **filters)
                    yield from (r for r in got["sessions"] if r["id"] not in seen)
                if got["more"]:
                    raise LabdError("list_incomplete", f"the daemon lists only the newest {MAX_LIST} sessions (it is "
                                    "older than paging: restart it on this version of labd to list them all)")
                return
            before = got["next"]
