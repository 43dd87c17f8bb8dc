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
from labd.runner.channel import Channel
from labd.runner.pacing import BATCH_BYTES, size_bounded
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
    cut, nbytes = size_bounded(batch)
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


def test_an_exception_mid_frame_leaves_the_cursor_covering_the_staged_rows(tmp_path: Path) -> None:
    """Ingest's hot loop keeps seq counters in locals: when an unexpected error ends a runner frame half-way
    (the frame is counted and dropped), the session's cursor still covers the rows staged before it, so the
    next frame's events get fresh seqs (no duplicate key, no gap) and the first ones are not taken again."""
    import time

    import zmq

    from labd.daemon.ingest import Batch, Ingest
    from labd.ipc.signing import derive_key
    from labd.ipc.wire import Codec, encode_json
    from labd.store.db import migrate, open_engine
    from labd.store.projections import RowChanges, SessionCursor, apply
    from labd.store.writer import BatchWriter

    class Faulty(Ingest):
        def _slow_event(self, cur, src_seq, ts, kind, node_id, parent, payload, b):  # type: ignore[no-untyped-def]
            if kind == "boom":  # an error no check anticipated, after the cursor was handed over
                raise RuntimeError("unexpected")
            super()._slow_event(cur, src_seq, ts, kind, node_id, parent, payload, b)

    engine = open_engine(f"sqlite:///{tmp_path}/s.db")
    migrate(engine)
    writer = BatchWriter(engine)
    key = b"k" * 32
    ing = Faulty(zmq.Context.instance(), writer, key, "inproc://unused-r", "inproc://unused-p", {}, {}, 1 << 20,
                 tmp_path)
    sid = "0123456789ab"
    cur = ing.cursors[sid] = SessionCursor(id=sid)
    changes = RowChanges()
    apply(cur, 1, time.time(), "session.created", "d", None,
          {"workflow": "demo.events", "name": sid, "params": {}, "limits": {}, "workdir": str(tmp_path)}, changes)
    writer.commit([], changes, ing.cursors)
    codec = Codec(derive_key(key, sid))
    real_caps = ing.outcap

    class FaultyCaps:  # an error in the hot path itself, while the loop's counters are ahead of the cursor
        def drop(self, sid: str, kind: str, size: int) -> Any:
            if kind == "output":  # the only output event below: {"text": "boom"}
                raise RuntimeError("unexpected")
            return real_caps.drop(sid, kind, size)

    ing.outcap = FaultyCaps()  # type: ignore[assignment]

    def frame(evs: list[list[Any]]) -> list[bytes]:
        return [f"{sid}:x".encode(), *codec.pack_events(sid, [encode_json(e) for e in evs])]

    def staged(b: Batch) -> list[tuple[int, int]]:  # (seq, src_seq) of every row, plain or not
        return sorted((r[1], r[5]) for rows in (b.rows, b.plain, b.noded) for r in rows)

    now = time.time()
    b = Batch()
    ing._process_frames(frame([[1, now, "custom", None, None, {"name": "a"}],  # noqa: SLF001
                               [2, now, "custom", None, None, {"name": "b"}],
                               [3, now, "boom", None, None, {}]]), b, seen=False)
    assert ing.counters.get("dropped.runner.error") == 1
    assert [seq for seq, _ in staged(b)] == [2, 3] and (cur.runner_seq, cur.last_seq) == (3, 3)
    ing._process_frames(frame([[3, now, "custom", None, None, {"name": "c"}],  # noqa: SLF001
                               [4, now, "custom", None, None, {"name": "d"}]]), b, seen=False)
    assert staged(b) == [(2, 1), (3, 2), (4, 4)]
    ing._process_frames(frame([[5, now, "custom", None, None, {"name": "e"}],  # noqa: SLF001
                               [6, now, "output", None, None, {"stream": "stdout", "text": "boom"}]]), b, seen=False)
    assert ing.counters.get("dropped.runner.error") == 2
    assert (cur.runner_seq, cur.last_seq) == (6, 5)
    ing._process_frames(frame([[7, now, "custom", None, None, {"name": "f"}]]), b, seen=False)  # noqa: SLF001
    assert staged(b)[-2:] == [(5, 5), (6, 7)]
    writer.commit(b.rows, b.changes, ing.cursors, b.plain, b.noded)  # no duplicate key
    writer.close()
    engine.dispose()
