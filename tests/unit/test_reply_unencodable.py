"""A reply the daemon cannot encode (nested deeper than JSON readers take) is answered with an error: it used to
raise out of the control plane's ``_reply`` and end the daemon's main loop (found with ``sessions.tree`` of a family
over ~125 generations deep)."""

from __future__ import annotations

import os
from typing import Any

from labd.daemon.control import ControlPlane
from labd.ipc.wire import Codec


class _Held:
    """Stands in for the daemon's ReplyBudget: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send(self, control: Any, identity: bytes, frames: list[bytes]) -> None:
        self.sent.append(frames)

    def admits(self, size: int) -> bool:
        return True


def test_a_reply_nested_too_deep_is_answered_reply_unencodable_not_raised() -> None:
    """``_reply`` of a result nested 400 levels deep sends ``reply_unencodable`` to the request (and counts it)
    instead of raising PayloadError into the main loop; a client decodes that answer."""
    key = os.urandom(32)
    plane = ControlPlane.__new__(ControlPlane)
    plane.codec, plane.counters, plane._parts_ok, plane.replies_held = Codec(key), {}, {}, _Held()
    deep: Any = "leaf"
    for _ in range(400):
        deep = {"children": [deep]}
    plane._reply(None, b"client", "req-1", {"tree": deep})  # type: ignore[arg-type]
    [frames] = plane.replies_held.sent  # type: ignore[attr-defined]
    reply = Codec(key).unpack(frames)
    assert reply.re == "req-1"
    assert reply.body["ok"] is False and reply.body["error"]["code"] == "reply_unencodable", reply.body
    assert plane.counters["control.reply_unencodable"] == 1
