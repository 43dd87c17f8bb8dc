"""Where a follower of one session's events stands: the rule that turns the store's history plus a lossy live
tail into each event exactly once, in ``seq`` order.

A follower subscribes to the live tail first, then reads the store from its position, then takes live events.
The live tail may drop events under bursts (a PUB socket's high-water mark), may repeat what the store already
gave, and a session's ``seq`` numbers have no holes. So a live event just after the position is delivered;
one at or before it is a duplicate; one beyond it means events were dropped: the follower reads the store up to
the one before it (the gap), then delivers it. The store is the truth: an event read from it is delivered
whenever it is beyond the position (a follower that starts part-way, like ``labd top``, jumps forward).

:class:`FollowCursor` holds no socket and does no I/O, so the blocking ``Client.follow`` and the asyncio
feed of ``labd top`` share it, each with its own way of reading the store.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FollowCursor", "still_ended"]


def still_ended(ended: bool, kind: str) -> bool:
    """Has the session ended, after an event of ``kind``? A resumed session (``session.continued``, see
    ``labd resume``) has an earlier ``session.ended`` in its history: that end no longer counts."""
    return kind == "session.ended" or (ended and kind != "session.continued")


class FollowCursor:
    """The last ``seq`` delivered and whether the session has ended (as of that event)."""

    __slots__ = ("last", "ended")

    def __init__(self, since: int = 0) -> None:
        self.last = since
        self.ended = False

    def gap_before(self, ev: dict[str, Any]) -> int | None:
        """For a live event: the last ``seq`` to read from the store before it (events the live tail dropped),
        or None when nothing is missing."""
        return ev["seq"] - 1 if ev["seq"] > self.last + 1 else None

    def stored(self, ev: dict[str, Any]) -> bool:
        """An event read from the store: True (deliver it) unless it was delivered already."""
        if ev["seq"] <= self.last:
            return False
        self._advance(ev)
        return True

    def live(self, ev: dict[str, Any]) -> bool:
        """An event from the live tail, after its gap (:meth:`gap_before`) was read from the store: True (deliver
        it) only when it is the next one; a duplicate, or one still past a gap the store could not fill, is not."""
        if ev["seq"] != self.last + 1:
            return False
        self._advance(ev)
        return True

    def _advance(self, ev: dict[str, Any]) -> None:
        self.last = ev["seq"]
        self.ended = still_ended(self.ended, ev["kind"])
