"""Who follows which session's live tail: the event socket's subscriptions, as the ingest thread tracks them.

ZeroMQ's XPUB passes each topic's first subscribe (``\\x01`` + topic) and last unsubscribe (``\\x00`` + topic).
Ingest reads them on its own thread (the socket is its) and asks :meth:`LiveSubscriptions.follows` per session, so
that it builds the live copy of a session's events only while someone follows it (docs/design.md, "Live tail").
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

__all__ = ["LiveSubscriptions", "MAX_TOPICS", "MAX_TOPIC_BYTES"]

#: live-tail subscriptions kept (distinct topics; XPUB passes each once): bounds memory and the "is anyone
#: following" check against a same-user peer subscribing to very many prefixes
MAX_TOPICS = 4096
MAX_TOPIC_BYTES = len("session.") + 64  # the longest topic that can be a prefix of a session's (ids <= 64 bytes)


class LiveSubscriptions:
    """The kept topics and the count of those past the bound. Used by the ingest thread only."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self._count = count  # the daemon's counters (live.topics_ignored, live.topics_over)
        self.topics: set[bytes] = set()
        self.over = 0  # subscriptions past MAX_TOPICS (not kept: every session counts as followed)

    def take(self, pub: zmq.Socket) -> None:
        """Read every pending (un)subscription from ``pub``, bounded: a topic that cannot be a prefix of any
        ``session.<id>`` (too long, or neither a prefix of ``session.`` nor starting with it) matches nothing
        and is not kept; past :data:`MAX_TOPICS` kept ones, the rest are only counted (:attr:`over`), and while
        any is, every session counts as followed (nobody misses events)."""
        while True:
            try:
                msg = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            topic = msg[1:]
            if len(topic) > MAX_TOPIC_BYTES or not (topic.startswith(b"session.") or b"session.".startswith(topic)):
                if msg[:1] == b"\x01":
                    self._count("live.topics_ignored")
                continue
            if msg[:1] == b"\x01":
                if len(self.topics) < MAX_TOPICS:
                    self.topics.add(topic)
                else:
                    self.over += 1
                    self._count("live.topics_over")
            elif msg[:1] == b"\x00":
                if topic in self.topics:
                    self.topics.discard(topic)
                elif self.over:
                    self.over -= 1

    def follows(self, sid: str) -> bool:
        """Does any client follow this session's live tail?"""
        topics = self.topics
        if self.over:
            return True
        if not topics:
            return False
        topic = f"session.{sid}".encode()
        if len(topics) <= 16:
            return any(topic.startswith(t) for t in topics)
        return any(topic[:i] in topics for i in range(len(topic) + 1))  # O(topic length), not O(topics)
