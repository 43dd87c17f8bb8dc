"""Replies in parts: a reply larger than one message travels as several ``reply.part`` messages.

One message is at most the message limit (16 MiB by default, :data:`labd.ipc.wire.DEFAULT_MAX_MESSAGE`), which
bounds what either side must hold for a message it has not yet checked. Some replies are legitimately larger (the
DAG or the comparison of sessions with tens of thousands of steps), and paging every such request would push the
work onto every client. So a client that says it can reassemble (``"parts": true`` in the request's envelope, set
by :class:`labd.ipc.client.Client` on every request) gets a reply over the limit as ``reply.part`` messages, each
signed like any message and each under the limit::

    {"type": "reply.part", "re": "<request id>", "body": {"part": i, "parts": n, "data": "<base64>"}}

The data of parts ``0 .. n-1``, joined in order, is the JSON of the reply's body (``{"ok": ..., "result": ...}``).
Parts of one reply are sent back to back on one connection, so they arrive in order. A reply is split only up to
:data:`MAX_REPLY` bytes and :data:`MAX_PARTS` parts (the daemon still holds the whole reply while it sends it);
beyond that, and for a client that did not ask for parts, the reply is ``reply_too_large`` as before. See
docs/protocol.md §3.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from labd.ipc.wire import Codec, Message, encode_json

__all__ = ["MAX_REPLY", "MAX_PARTS", "PART_TYPE", "max_reply", "split_reply", "Reassembly", "PartError"]

#: the largest reply sent in parts (its JSON body, bytes): what a client may have to hold
MAX_REPLY = 64 * 1024 * 1024
#: the most parts one reply is split into: far below a socket's high-water mark (1,000 messages, past which a ROUTER
#: drops what it should send), so a small ``max_message`` cannot turn a large reply into parts that are lost
MAX_PARTS = 64
PART_TYPE = "reply.part"
#: room for a part's envelope (ids, time stamp, the ``part``/``parts`` fields) within the message limit
_ENVELOPE = 1024


def _part_bytes(limit: int) -> int:
    """Reply bytes per part: whole base64 groups (each part decodes alone) that fit ``limit`` with the envelope."""
    return max(3, (limit - _ENVELOPE) * 3 // 4 // 3 * 3)


def max_reply(limit: int) -> int:
    """The largest reply body (bytes of JSON) sent in parts of at most ``limit`` bytes each."""
    return min(MAX_REPLY, MAX_PARTS * _part_bytes(limit))


def split_reply(codec: Codec, body: dict[str, Any], re: str, limit: int) -> list[list[bytes]] | None:
    """The ``reply.part`` messages (each ``[signature, body]``, under ``limit`` bytes) carrying ``body`` as the
    reply to request ``re``; None when the body is over :func:`max_reply` (the caller refuses it)."""
    raw = encode_json(body)
    if len(raw) > max_reply(limit):
        return None
    step = _part_bytes(limit)
    view = memoryview(raw)
    count = -(-len(raw) // step)
    return [codec.pack(PART_TYPE, {"part": i, "parts": count,
                                   "data": base64.b64encode(view[i * step:(i + 1) * step]).decode("ascii")}, re=re)
            for i in range(count)]


class PartError(Exception):
    """Parts that do not make a reply (out of order, inconsistent counts, over the client's limit)."""


class Reassembly:
    """A client's reassembly of one request's ``reply.part`` messages, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = MAX_REPLY) -> None:
        self.max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self._parts: int | None = None

    def add(self, msg: Message) -> dict[str, Any] | None:
        """Take the next part; return the reply's body once the last part came, None before. Raises
        :class:`PartError` for a part that cannot belong to this reply."""
        body = msg.body
        part, parts, data = body.get("part"), body.get("parts"), body.get("data")
        if not (isinstance(part, int) and isinstance(parts, int) and isinstance(data, str)) \
                or part != len(self._chunks) or parts < 1 or part >= parts \
                or (self._parts is not None and parts != self._parts):
            raise PartError(f"reply part {part!r} of {parts!r} out of order (expected part {len(self._chunks)})")
        self._parts = parts
        try:
            chunk = base64.b64decode(data, validate=True)
        except ValueError:
            raise PartError(f"reply part {part} is not base64") from None
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise PartError(f"the reply is over {self.max_bytes} bytes")
        self._chunks.append(chunk)
        if part + 1 < parts:
            return None
        try:
            reply = orjson.loads(b"".join(self._chunks))
        except orjson.JSONDecodeError as exc:
            raise PartError(f"the reply's parts do not make JSON: {exc}") from None
        finally:
            self._chunks = []
        if not isinstance(reply, dict):
            raise PartError("the reply's parts do not make a JSON object")
        return reply
