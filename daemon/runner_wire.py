"""What a runner's frame looks like on the wire, as ingest reads it before (and besides) decoding it.

The session a runner's routing id claims (:func:`runner_session`: a claim only, the frame must still verify with that
session's key), and the span of a frame's ``events`` array that the live tail publishes as one run
(:func:`run_span`) when the frame is laid out exactly as the runner's codec writes it.
"""

from __future__ import annotations

import re

import orjson

from labd.daemon.ingest_batch import PUB_CHUNK_BYTES
from labd.ipc.wire import ACK_TAIL, WireError

__all__ = ["BadIdentity", "MAX_RUN_BYTES", "run_span", "runner_session"]

_dumps = orjson.dumps

#: the head of a runner frame exactly as :meth:`labd.ipc.wire.Codec.pack_events` writes it (nothing else may come
#: before the events; the session is checked separately)
_RUN_HEAD = re.compile(rb'\{"v":1,"id":"[0-9A-Za-z_-]{1,64}","ts":[0-9.eE+-]{1,32},"type":"events","body":\{"session":')
#: a frame's events published as one run only up to this size (the Python runner's frames are at most 512 KiB);
#: larger ones are cut into per-event messages
MAX_RUN_BYTES = 2 * PUB_CHUNK_BYTES


def run_span(raw: bytes, sid: str) -> memoryview | None:
    """The bytes of a runner frame's ``events`` array, if the frame is laid out as the runner's codec writes it:
    the fixed head, the session, ``"events":[`` ... ``]}}`` (or ``],"ack":true}}``). The head leaves no room
    for another ``body`` or ``events`` key before the array; what follows the array inside the span, if it
    ended early (more keys: crafted bytes), is caught where the span is published: inside a two-element array
    (:meth:`labd.ipc.wire.Codec.pack_run`), anything but one JSON value makes the message invalid JSON, which a
    follower drops (and fills from the store). None for any other layout (then the per-event form is published).
    A view, not a copy: the frame is kept until its batch is published."""
    m = _RUN_HEAD.match(raw)
    if m is None or len(raw) > MAX_RUN_BYTES:
        return None
    if raw.endswith(b"]}}"):
        tail = 2
    elif raw.endswith(ACK_TAIL):  # the runner asked for an ack at once: the same array, one key after it
        tail = len(ACK_TAIL) - 1
    else:
        return None
    at = m.end()
    mid = _dumps(sid) + b',"events":['
    if not raw.startswith(mid, at):
        return None
    return memoryview(raw)[at + len(mid) - 1:-tail]


class BadIdentity(WireError):
    """A runner's routing id that names no session (the frame is counted as ``bad_session``)."""

    reason = "bad_session"

    def __init__(self) -> None:
        super().__init__("routing id names no session")


def runner_session(identity: bytes) -> str | None:
    """The session a runner's routing id claims (``<session id>:<random>``; a bare id is accepted too).
    A claim only: the frame must still verify with that session's key."""
    sid = identity.split(b":", 1)[0]
    if not 0 < len(sid) <= 64:
        return None
    try:
        return sid.decode("ascii")
    except UnicodeDecodeError:
        return None
