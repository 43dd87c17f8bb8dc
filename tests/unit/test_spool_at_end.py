"""A session's leftover spool, read by the daemon when its runner has ended (daemon/daemon_items.py,
``_ingest_spool``), on the real ingest thread (tests/support/ingest_rig.py).

The spool is the session's own file: an honest runner leaves at most its unacknowledged backlog there, but the
workflow's code runs in that process and may write anything into it. The daemon reads it a batch at a time and
never reads one record whole beyond what a message may carry, so its memory stays bounded; every event is still
stored exactly once, in order, before ``session.ended``.
"""

from __future__ import annotations

import os
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from labd.daemon.spool_reading import SPOOL_PASS_EVENTS
from labd.ipc.wire import encode_json
from labd.runner.spool import HEADER, Spool
from tests.conftest import wait_until
from tests.support.ingest_rig import SID, Rig

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def rig() -> Iterator[Rig]:
    r = Rig(None)
    r.create({})
    yield r
    r.close()


def tick(seq: int, data: Any = None) -> bytes:
    """A runner's encoded ``custom`` event ``tick`` (its data: ``seq`` unless given)."""
    payload = {"name": "tick", "data": seq if data is None else data}
    return encode_json([seq, time.time(), "custom", None, None, payload])


def spool(rig: Rig) -> Spool:
    return Spool(rig.tmp / SID / "events.spool")


def ended(rig: Rig) -> list[tuple[Any, ...]]:
    rows = rig.stored()
    return rows if rows and rows[-1][1] == "session.ended" else []


def events(rig: Rig) -> list[tuple[str, Any]]:
    """(kind, payload) of the session's events, in seq order."""
    with rig.ing.writer.engine.connect() as conn:
        return [(k, orjson.loads(p)) for k, p in conn.exec_driver_sql(
            "SELECT kind, payload FROM events WHERE session_id = ? ORDER BY seq", (SID,))]


def commits(rig: Rig) -> list[int]:
    """Rows of each commit of the ingest thread from now on."""
    writer = rig.ing.writer
    real = writer.commit
    sizes: list[int] = []

    def commit(rows: Any, changes: Any, cursors: Any, plain: Any = (), noded: Any = ()) -> Any:
        sizes.append(len(rows) + len(plain) + len(noded))
        return real(rows, changes, cursors, plain, noded)
    writer.commit = commit  # type: ignore[method-assign]
    return sizes


def test_a_long_leftover_spool_is_stored_whole_a_batch_at_a_time(rig: Rig) -> None:
    """23,456 events left in a spool (the workflow wrote them there itself) are all stored, in order, exactly once,
    before ``session.ended``, in commits of at most a batch each (before: one batch of all of them, held in the
    daemon's memory at once); the runner's outcome, its last record, decides the status; the spool is removed."""
    n = 23_456
    sp = spool(rig)
    for i in range(1, n + 1):
        sp.append(i, tick(i))
    sp.append(n + 1, encode_json([n + 1, time.time(), "session.finished", None, None, {"outcome": "completed"}]))
    sp.close()
    sizes = commits(rig)
    rig.end()
    wait_until(lambda: ended(rig), timeout=60, what="session.ended stored")
    evs = events(rig)
    assert [p["data"] for k, p in evs if k == "custom"] == list(range(1, n + 1))
    assert evs[-1][0] == "session.ended" and evs[-1][1]["status"] == "completed", evs[-1]
    assert max(sizes) <= SPOOL_PASS_EVENTS + 2 and len(sizes) >= n // SPOOL_PASS_EVENTS, sizes
    assert not (rig.tmp / SID / "events.spool").exists()


def test_a_record_too_long_to_send_is_a_marker_and_is_never_read_whole(rig: Rig) -> None:
    """A 40 MB record (more than one message may carry, 16 MiB here) between small ones is stored as
    ``event.truncated`` with its kind and size, the events around it as they are; a torn record at the end whose
    header claims 1.5 GB ends the reading. The ingest thread allocates a few MB doing so, not the record's size
    (before: the 40 MB body was read, decoded and stored whole, and the torn header made it ask for 1.5 GB)."""
    sp = spool(rig)
    big = tick(2, "x" * 40_000_000)
    sp.append(1, tick(1))
    sp.append(2, big)
    sp.append(3, tick(3))
    sp.close()
    with open(rig.tmp / SID / "events.spool", "r+b") as f:  # after the records: a header and a few bytes
        data = f.read()
        end = len(data.rstrip(b"\0"))
        f.seek(end)
        f.write(HEADER.pack(1_500_000_000, 0, 4) + b"[4,1.0,")
    del data
    tracemalloc.start()
    try:
        rig.end()
        wait_until(lambda: ended(rig), timeout=60, what="session.ended stored")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    evs = events(rig)
    assert [k for k, _ in evs][1:] == ["custom", "event.truncated", "custom", "session.ended"], evs
    assert evs[2][1] == {"kind": "custom", "size": len(big)}
    del big
    assert [p["data"] for k, p in evs if k == "custom"] == [1, 3]
    assert peak < 16_000_000, f"the ingest thread allocated {peak:,} bytes reading the spool"


def test_a_forged_spool_with_a_gap_ends_the_reading_at_the_gap(rig: Rig) -> None:
    """A spool whose sequence jumps (1..7000, then 9000..9999) and then goes back: the events up to the gap are
    stored and the session ends; nothing after the gap can be placed, and the reading does not go round forever."""
    sp = spool(rig)
    for i in [*range(1, 7001), *range(9000, 10_000), 5]:
        sp.append(i, tick(i))
    sp.close()
    rig.end()
    wait_until(lambda: ended(rig), timeout=60, what="session.ended stored")
    ticks = [p["data"] for k, p in events(rig) if k == "custom"]
    assert ticks == list(range(1, 7001))


def test_a_stop_while_a_spool_is_being_read_finishes_it_first(rig: Rig) -> None:
    """The daemon is asked to stop just after a session ended with 20,000 events in its spool: the ingest thread
    stores them all and ``session.ended`` before it exits, rather than leaving the session unended."""
    sp = spool(rig)
    for i in range(1, 20_001):
        sp.append(i, tick(i))
    sp.close()
    rig.end()
    rig.daemon_side.send_pyobj(("stop",))
    rig.ing.join(60)
    assert not rig.ing.is_alive()
    rows = rig.stored()
    assert rows[-1][1] == "session.ended" and sum(1 for r in rows if r[1] == "custom") == 20_000


def test_a_corrupt_record_ends_the_reading_where_it_is(rig: Rig) -> None:
    """A record whose checksum does not match (bytes changed after it was written) ends the reading: what is
    before it is stored, nothing after it (the order after damage cannot be trusted)."""
    sp = spool(rig)
    for i in range(1, 11):
        sp.append(i, tick(i))
    sp.close()
    path = rig.tmp / SID / "events.spool"
    data = bytearray(path.read_bytes())
    off = 0
    for _ in range(6):  # the 7th record's body: flip a byte
        length = struct.unpack_from("<I", data, off)[0]
        off += HEADER.size + length
    data[off + HEADER.size + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert zlib.crc32(b"") == 0 and os.path.getsize(path) == len(data)
    rig.end()
    wait_until(lambda: ended(rig), timeout=60, what="session.ended stored")
    assert [p["data"] for k, p in events(rig) if k == "custom"] == list(range(1, 7))
