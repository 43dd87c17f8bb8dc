"""A reply the daemon cannot encode as it is (nested deeper than JSON readers take) is sent with its too-deep values
cut, else answered with an error: it used to raise out of the control plane's ``_reply`` and end the daemon's main
loop (found with ``sessions.tree`` of a family over ~125 generations deep)."""

from __future__ import annotations

import os
from typing import Any

import pytest

import labd.daemon.control as control
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


def test_a_reply_nested_too_deep_is_answered_reply_unencodable_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_reply`` of a result nested 400 levels deep never raises PayloadError into the main loop: it is sent with
    its levels past ``REPLY_DEPTH`` cut (see the next test), and a reply that still cannot be encoded (the cut made a
    no-op here) is answered ``reply_unencodable`` (counted), which a client decodes."""
    key = os.urandom(32)
    deep: Any = "leaf"
    for _ in range(400):
        deep = {"children": [deep]}
    for cut in (True, False):
        if not cut:
            monkeypatch.setattr(control, "cut_deep", lambda body, *_a: body)
        plane = ControlPlane.__new__(ControlPlane)
        plane.codec, plane.counters, plane._parts_ok, plane.replies_held = Codec(key), {}, {}, _Held()
        plane._reply(None, b"client", "req-1", {"tree": deep})  # type: ignore[arg-type]
        [frames] = plane.replies_held.sent  # type: ignore[attr-defined]
        reply = Codec(key).unpack(frames)
        assert reply.re == "req-1"
        if cut:
            assert reply.body["ok"] is True and plane.counters == {"control.reply_cut": 1}
        else:
            assert reply.body["ok"] is False and reply.body["error"]["code"] == "reply_unencodable", reply.body
            assert plane.counters["control.reply_unencodable"] == 1


def test_a_recorded_value_too_deep_to_send_is_cut_not_the_whole_reply() -> None:
    """What the store accepted can be nested up to ~253 levels (a custom event's data, an approval's context: checked
    as the runner sends them), but a reply carries it 4-6 levels further down (``result.approvals[i].context``,
    ``result.events[i].payload.data``): one such pending approval made ``approvals.list`` of every session, and one
    such event every page of its session's events, ``reply_unencodable`` (before that fix: the daemon's end). The
    reply is sent with each container past ``REPLY_DEPTH`` levels replaced by ``{"unsent": why}`` (counted), the rest
    of it intact; a shallow reply is unchanged."""
    key = os.urandom(32)
    plane = ControlPlane.__new__(ControlPlane)
    plane.codec, plane.counters, plane._parts_ok, plane.replies_held = Codec(key), {}, {}, _Held()
    deep: Any = []
    for _ in range(251):  # what ctx.approval(context=...) and ctx.emit(data=...) accept
        deep = [deep]
    other = {"approval_id": "ap-2", "session_id": "s2", "context": {"rows": [1, 2]}}
    plane._reply(None, b"client", "req-1", {"approvals": [  # type: ignore[arg-type]
        {"approval_id": "ap-1", "session_id": "s1", "context": deep}, other]})
    [frames] = plane.replies_held.sent  # type: ignore[attr-defined]
    body = Codec(key).unpack(frames).body
    assert body["ok"] is True, body
    first, second = body["result"]["approvals"]
    assert second == other and first["approval_id"] == "ap-1"
    value, depth = first["context"], 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert set(value) == {"unsent"} and "deeper than" in value["unsent"], value
    assert 200 < depth < 251
    assert plane.counters["control.reply_cut"] == 1 and "control.reply_unencodable" not in plane.counters


def test_a_request_the_store_failed_is_answered_in_one_line_without_its_sql() -> None:
    """A request a damaged database failed (``database disk image is malformed``) is answered ``internal`` with the
    driver's one line: it was SQLAlchemy's whole text, the SQL statement and its parameters over several lines,
    which `labd ps` printed (an admin's review). Any other error keeps its first line."""
    import sqlite3

    import sqlalchemy.exc

    plane = ControlPlane.__new__(ControlPlane)
    plane.log = _Log()
    damaged = sqlalchemy.exc.DatabaseError("SELECT sessions.id FROM sessions WHERE ...", {"p": 1},
                                           sqlite3.DatabaseError("database disk image is malformed"))
    assert "\n" in str(damaged) and "SELECT" in str(damaged)
    err = plane._failed(damaged, "session.list")
    assert (err.code, err.message) == ("internal", "internal error: database disk image is malformed")
    assert plane._failed(ValueError("first\nsecond"), "x").message == "internal error: first"


class _Log:
    """Stands in for the daemon's logger: the traceback goes to the log, not the reply."""

    def exception(self, *_a: Any, **_kw: Any) -> None:
        pass

    def warning(self, *_a: Any, **_kw: Any) -> None:
        pass
