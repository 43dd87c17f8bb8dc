"""Where a follower of one session's events stands: the rule that turns the store's history plus a lossy live
tail into each event exactly once, in ``seq`` order.

A follower subscribes to the live tail first, then reads the store from its position, then takes live events.
The live tail may drop events under bursts (a PUB socket's high-water mark), may repeat what the store already
gave, and a session's ``seq`` numbers have no holes. So a live event just after the position is delivered;
one at or before it is a duplicate; one beyond it means events were dropped: the follower reads the store up to
the one before it (the gap), then delivers it. The store is the truth: an event read from it is delivered
whenever it is beyond the position (a follower that starts part-way, like ``labd top``, jumps forward).

:class:`FollowCursor` holds no socket and does no I/O, so the blocking ``Client.follow`` (:func:`follow_session`)
and the asyncio feed of ``labd top`` share it, each with its own way of reading the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq

from labd.ipc.events import TERMINAL_STATUSES
from labd.ipc.live import live_events
from labd.ipc.wire import Codec, WireError

if TYPE_CHECKING:
    from labd.ipc.client import Client

__all__ = ["FollowCursor", "follow_session", "still_ended"]


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


def follow_session(client: Client, ref: str, since: int = 0, *, until_end: bool = True,
                   timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """:meth:`labd.ipc.Client.follow`: subscribe to the session's live tail first, then read the store, then
    take live events, filling any gap from the store (:class:`FollowCursor`)."""
    row = client.session(ref)
    sid = row["id"]
    sub = client._socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SUBSCRIBE, f"session.{sid}".encode())
    sub.connect(client.info.events)
    codec = Codec(client.info.key_bytes)
    deadline = None if timeout is None else time.monotonic() + timeout
    cursor = FollowCursor(since)
    try:
        def from_store(upto: int | None) -> Iterator[dict[str, Any]]:
            for ev in client.history(sid, since=cursor.last):
                if upto is not None and ev["seq"] > upto:
                    return
                if cursor.stored(ev):
                    yield ev

        first = cursor.last
        yield from from_store(None)
        if cursor.last == first and row["status"] in TERMINAL_STATUSES:
            # it had ended (read before the history) and nothing came after `since`: its end is at or
            # before `since`, so no session.ended is coming (a resume would have shown in the history)
            cursor.ended = True
        idle_checks = 0.0
        while not (cursor.ended and until_end):
            if deadline is not None and time.monotonic() > deadline:
                from labd.ipc.client import LabdError  # client.py imports this module

                raise LabdError("timeout", f"session {sid} did not end within {timeout:g}s")
            if not sub.poll(250):
                idle_checks += 0.25
                if idle_checks >= 1.0:  # quiet for a while: make sure nothing was dropped live
                    idle_checks = 0.0
                    yield from from_store(None)
                continue
            frames = sub.recv_multipart()
            idle_checks = 0.0
            try:
                msg = codec.unpack(frames[1:])
            except WireError:
                continue
            for ev in live_events(msg.body):
                upto = cursor.gap_before(ev)
                if upto is not None:
                    yield from from_store(upto)
                if cursor.live(ev):
                    yield ev
    finally:
        sub.close(0)
