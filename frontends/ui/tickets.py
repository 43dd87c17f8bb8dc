"""One-time download tickets for `labd ui`: the page asks for one (with its token) and hands the browser a plain link
to ``/api/download/<ticket>``, so the browser saves the file as it streams in. A download fetched with the token in
a header had to be held whole in the page's memory first (``fetch`` then ``blob()``: a 1.5 GiB file took 1.5 GiB and
8 s before the save began; UI review).

A ticket is 32 random bytes (URL-safe), names one file of one session, is taken by its first use and lapses after
:data:`TICKET_TTL` seconds; at most :data:`MAX_TICKETS` are outstanding (the oldest go first)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Tickets", "Ticket", "TICKET_TTL", "MAX_TICKETS"]

TICKET_TTL = 60.0
MAX_TICKETS = 256


class Ticket(NamedTuple):
    """The file a ticket lets its holder download once: a session's file as the download path names it."""

    session: str
    path: str
    b64: str | None


class Tickets:
    """Outstanding tickets (the server's event loop only: no lock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: OrderedDict[str, tuple[float, Ticket]] = OrderedDict()

    def issue(self, ticket: Ticket) -> str:
        """A new ticket's id for ``ticket``."""
        now = self._clock()
        while self._open and (len(self._open) >= MAX_TICKETS or next(iter(self._open.values()))[0] < now):
            self._open.popitem(last=False)  # lapsed ones first (issued in time order), then the oldest
        tid = secrets.token_urlsafe(32)
        self._open[tid] = (now + TICKET_TTL, ticket)
        return tid

    def take(self, tid: str) -> Ticket | None:
        """The file of ticket ``tid``, once; None for an unknown, used or lapsed one."""
        held = self._open.pop(tid, None)
        if held is None or held[0] < self._clock():
            return None
        return held[1]
