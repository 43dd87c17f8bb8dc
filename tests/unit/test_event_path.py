"""The per-event helpers of the event path, whose fast forms must keep the exact behaviour of the plain ones:
the spool's record layout, the channel's batch cut, and the live tail's message cut."""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from labd.daemon.ingest_batch import LIVE_OVERHEAD, PUB_CHUNK_BYTES, LiveEvents
from labd.runner.channel import BATCH_BYTES, Channel, _size_bounded
from labd.runner.spool import HEADER, Spool, read_spool


def test_spool_records_keep_the_documented_layout(tmp_path: Path) -> None:
    """Each appended record is ``u32 length | u32 crc32(src_seq bytes + body) | u64 src_seq`` then the body, back
    to back, and reads back in order (the daemon reads spools of runners of this layout)."""
    path = tmp_path / "events.spool"
    sp = Spool(path)
    bodies = [orjson.dumps([i, 1.5, "custom", None, None, {"name": "x" * (i * 37 % 300)}]) for i in range(1, 400)]
    for i, body in enumerate(bodies, start=1):
        sp.append(i, body)
    sp.close()
    data = path.read_bytes()
    off = 0
    for i, body in enumerate(bodies, start=1):
        length, crc, seq = HEADER.unpack_from(data, off)
        assert (length, seq) == (len(body), i)
        assert crc == zlib.crc32(body, zlib.crc32(i.to_bytes(8, "little")))
        assert data[off + HEADER.size:off + HEADER.size + length] == body
        off += HEADER.size + length
    assert off == len(data)
    assert list(read_spool(path)) == list(enumerate(bodies, start=1))


def test_spool_append_across_segments_and_reopen(tmp_path: Path) -> None:
    """Records that cross the mapping's growth steps (1 MiB) are intact, and a reopened spool appends after
    the last record."""
    path = tmp_path / "events.spool"
    sp = Spool(path)
    big = b"[" + b"7" * 300_000 + b"]"
    for i in range(1, 8):
        sp.append(i, big)
    sp.close()
    sp = Spool(path)
    sp.append(8, b"[8]")
    sp.close()
    got = list(read_spool(path))
    assert [s for s, _ in got] == list(range(1, 9)) and got[-1][1] == b"[8]" and got[0][1] == big


def _size_bounded_reference(batch: list[bytes]) -> list[bytes]:
    total = 0
    for i, raw in enumerate(batch):
        total += len(raw)
        if total > BATCH_BYTES and i > 0:
            return batch[:i]
    return batch


@given(st.lists(st.integers(min_value=1, max_value=BATCH_BYTES // 3), max_size=40))
def test_batch_cut_matches_the_plain_loop(sizes: list[int]) -> None:
    """The channel's batch cut (done in C) takes the same events as the plain loop, at least one, and reports
    their bytes."""
    batch = [b"x" * n for n in sizes]
    cut, nbytes = _size_bounded(batch)
    assert cut == _size_bounded_reference(batch)
    assert nbytes == sum(map(len, cut))


def _chunks_reference(evs: list[tuple[int, Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    cur: list[Any] = []
    size = 0
    for n, ev in evs:
        size += LIVE_OVERHEAD + n
        cur.append(ev)
        if size > PUB_CHUNK_BYTES:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


@given(st.lists(st.integers(min_value=0, max_value=PUB_CHUNK_BYTES // 2), max_size=60))
def test_live_chunks_match_the_plain_loop(sizes: list[int]) -> None:
    """Live events are cut into messages exactly as before: a message ends with the event that takes it past
    PUB_CHUNK_BYTES; every event is in one message, in order."""
    live = LiveEvents()
    for i, n in enumerate(sizes):
        live.add(n, [i])
    assert live.chunks() == _chunks_reference([(n, [i]) for i, n in enumerate(sizes)])


def test_emit_records_what_orjson_alone_cannot_encode(tmp_path: Path) -> None:
    """emit's direct orjson call falls back to the full encoder: an int over 64 bits and a non-str key are
    recorded (as text), not refused, in the spool and the send queue alike."""
    ch = Channel("ipc://" + str(tmp_path / "nobody"), b"k" * 32, "s1", spool=tmp_path / "events.spool")
    try:
        ch.emit("custom", {"name": "big", "data": 2**70})
        ch.emit("custom", {"name": "keys", "data": {(1, 2): random.random()}})
        ch.emit("custom", {"name": "set", "data": {1}})
        pending = [orjson.loads(r) for r in ch._pending]  # noqa: SLF001 - nothing is sent without a daemon
        assert [p[0] for p in pending] == [1, 2, 3]
        assert pending[0][5]["data"] == str(2**70)
        assert list(pending[1][5]["data"]) == ["(1, 2)"]
        assert pending[2][5]["data"] == [1]
        assert [orjson.loads(b) for _, b in read_spool(tmp_path / "events.spool")] == pending
    finally:
        ch.close(timeout=0.0)
