"""Replies in parts (labd.ipc.parts): split under the message limit, reassembled exactly, refused when wrong."""

from __future__ import annotations

import pytest

from labd.ipc.parts import MAX_PARTS, MAX_REPLY, PART_TYPE, PartError, Reassembly, max_reply, split_reply
from labd.ipc.wire import Codec

KEY = b"k" * 32
LIMIT = 64 * 1024


def _parts(body: dict, limit: int = LIMIT) -> list:
    sender, receiver = Codec(KEY, max_message=limit), Codec(KEY, max_message=limit)
    frames = split_reply(sender, body, "req-1", limit)
    assert frames is not None
    return [receiver.unpack(f) for f in frames]


def test_a_large_reply_splits_into_signed_parts_under_the_limit_and_reassembles_exactly() -> None:
    """Every part is a signed `reply.part` answering the request, under the limit (the receiving codec refuses a
    message over it), and the parts joined in order give back the very reply, unicode included."""
    body = {"ok": True, "result": {"rows": [{"i": i, "text": "é✓" * 40} for i in range(3000)]}}
    msgs = _parts(body)
    assert len(msgs) > 3
    assert all(m.type == PART_TYPE and m.re == "req-1" and m.body["parts"] == len(msgs) for m in msgs)
    whole = Reassembly()
    got = [whole.add(m) for m in msgs]
    assert got[:-1] == [None] * (len(msgs) - 1)
    assert got[-1] == body


def test_parts_out_of_order_or_of_another_count_are_refused() -> None:
    """A missing, repeated or reordered part, or one claiming another total, is a PartError (the client reports
    `bad_reply`), never a wrong reply."""
    msgs = _parts({"ok": True, "result": "x" * 300_000})
    with pytest.raises(PartError, match="out of order"):
        Reassembly().add(msgs[1])
    r = Reassembly()
    r.add(msgs[0])
    with pytest.raises(PartError, match="out of order"):
        r.add(msgs[0])
    r = Reassembly()
    r.add(msgs[0])
    forged = type(msgs[1])(type=PART_TYPE, body={**msgs[1].body, "parts": 99}, id="x", ts=0.0, re="req-1")
    with pytest.raises(PartError):
        r.add(forged)


def test_a_reply_over_the_clients_bound_is_refused_as_it_comes() -> None:
    """The client holds at most its bound: parts beyond it raise before the rest is kept."""
    msgs = _parts({"ok": True, "result": "y" * 500_000})
    r = Reassembly(max_bytes=200_000)
    with pytest.raises(PartError, match="over 200000 bytes"):
        for m in msgs:
            r.add(m)


def test_a_reply_over_max_reply_is_not_split() -> None:
    """Past MAX_REPLY the daemon does not send parts (it answers reply_too_large): split_reply says so."""
    body = {"ok": True, "result": "z" * (MAX_REPLY + 1)}
    assert split_reply(Codec(KEY), body, "req-1", LIMIT) is None


def test_a_small_message_limit_never_makes_more_parts_than_a_socket_queues() -> None:
    """With the smallest `max_message` (4096 bytes) a reply is split into at most MAX_PARTS parts, far below the
    1,000 messages a ZeroMQ socket queues before it drops (an attack review: 5,558 parts of a 12 MB DAG, parts
    2,000-3,169 silently lost, `bad_reply`); a larger one is refused (reply_too_large) instead."""
    limit = 4096
    fits = {"ok": True, "result": "a" * (max_reply(limit) - 40)}
    msgs = _parts(fits, limit)
    assert len(msgs) <= MAX_PARTS
    assert split_reply(Codec(KEY, max_message=limit), {"ok": True, "result": "a" * max_reply(limit)}, "r",
                       limit) is None
