"""The runner channel never loops on an event too large to send."""

from __future__ import annotations

import orjson

from labd.runner.channel import Channel


def _raw(seq: int, payload: dict) -> bytes:
    return orjson.dumps([seq, 0.0, "custom", "n1", None, payload])


def test_an_event_too_large_for_one_message_is_replaced_by_a_marker() -> None:
    """A single event bigger than the message limit becomes ``event.truncated`` (kind and size kept),
    so the channel does not try to send it forever."""
    ch = Channel("ipc:///nonexistent", b"k" * 32, "s1")
    ch._codec.max_message = 10_000  # noqa: SLF001 - exercising the limit without a 16 MiB payload
    big = _raw(1, {"name": "blob", "data": "x" * 20_000})
    ch._q = [big]  # noqa: SLF001
    ch._times = [0.0]  # noqa: SLF001
    ch._shrink(0, [big])  # noqa: SLF001
    seq, _ts, kind, node, _parent, payload = orjson.loads(ch._q[0])  # noqa: SLF001
    assert (seq, kind, node, payload["kind"]) == (1, "event.truncated", "n1", "custom")
    assert payload["size"] > 20_000


def test_a_batch_too_large_is_sent_in_smaller_pieces() -> None:
    """Several events that together exceed the limit are split, not truncated."""
    ch = Channel("ipc:///nonexistent", b"k" * 32, "s1")
    batch = [_raw(i, {"name": "x", "data": i}) for i in range(1, 9)]
    ch._q = list(batch)  # noqa: SLF001
    ch._shrink(0, batch)  # noqa: SLF001
    assert ch._batch_cap == 4 and ch._q == batch  # noqa: SLF001
