"""What the daemon reads of a session's spool is bounded in work, not only in memory (attack review): the spool is
written by a process running the session's code, which can fill it with records claiming gigabytes (a sparse file
costs it nothing) or with any number of records to skip, and the daemon reads it on its ingest thread, which
records every session."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from labd.daemon.spools import same_file, spooled_events
from labd.runner.spool import HEADER, Spool

pytestmark = pytest.mark.timeout(120)


def test_records_claiming_gigabytes_are_taken_from_their_head(tmp_path: Path) -> None:
    """Three records of 2 GiB each in a sparse file (their checksums made up): each is taken as ``event.truncated``
    with its kind and size, from its head, its body neither read nor checked; before, each was read whole to check
    its checksum (seconds of the ingest thread per record, every pass) and then ended the read. A bound of a few
    kilobytes a pass takes one at a time."""
    path = tmp_path / "events.spool"
    size = 1 << 31
    with open(path, "wb") as f:
        for seq in (1, 2, 3):
            f.write(HEADER.pack(size, 0xDEADBEEF, seq) + b'[%d,1.5,"custom",' % seq)
            f.seek(f.tell() + size - len(b'[1,1.5,"custom",'))
        f.truncate()
    chunk = spooled_events(path, 0, max_event=1 << 20, max_events=5000, max_bytes=4 << 20)
    assert [(e[0], e[2], e[5]) for e in chunk.events] == [
        (seq, "event.truncated", {"kind": "custom", "size": size}) for seq in (1, 2, 3)]
    assert not chunk.more
    one = spooled_events(path, 0, max_event=1 << 20, max_events=5000, max_bytes=100)
    assert [e[0] for e in one.events] == [1] and one.more and one.end == HEADER.size + size


def test_a_record_a_message_could_carry_is_still_checked(tmp_path: Path) -> None:
    """A record no longer than a message keeps its checksum check: a damaged one ends the read there, as before (a
    crash's torn write is never taken for an event)."""
    path = tmp_path / "events.spool"
    body = b'[1,1.5,"custom",null,null,{"x":"' + b"y" * (2 << 20) + b'"}]'
    with open(path, "wb") as f:
        f.write(HEADER.pack(len(body), 12345, 1) + body)
    assert spooled_events(path, 0, max_event=4 << 20).events == []


def test_records_already_stored_are_skipped_a_bounded_amount_per_pass_and_read_on_from_there(tmp_path: Path) -> None:
    """300,000 records already stored and one new: a pass skips at most about ``max_bytes`` of them and says where
    it got to; passes that go on from there reach the new record, once. Before, one pass skipped any number."""
    path = tmp_path / "events.spool"
    spool = Spool(path)
    for seq in range(1, 300_002):
        spool.append(seq, orjson.dumps([seq, 1.5, "custom", None, None, {}]))
    spool.close()
    start, passes, found = 0, 0, []
    while True:
        chunk = spooled_events(path, 300_000, start=start, max_event=1 << 20, max_events=5000, max_bytes=1 << 20)
        passes += 1
        found += [e[0] for e in chunk.events]
        if not chunk.more:
            break
        assert chunk.events or chunk.skipped_to == chunk.end > start
        start = chunk.end
    assert found == [300_001] and passes > 3


def test_an_ended_runners_spool_is_read_to_its_end_however_many_records_are_stored_already(tmp_path: Path) -> None:
    """The daemon reads an ended runner's spool before it records the session's end, a bounded amount a pass, going
    on where the last pass stopped. With 300,000 records stored already and ten not (a runner killed after 300,010
    events), the passes reach the ten and the reading ends: the place a pass that only skipped had stopped at was
    refused, so every pass began again at the start, for good (the session stayed `running`, ingest busy: retest
    of the attack fixes). The place is used only in the same file."""
    from types import SimpleNamespace

    from labd.daemon.spool_reading import SpoolReading
    from labd.daemon.spools import spool_of
    from labd.store.projections import SessionCursor

    sid = "0a0b0c0d0e0f"
    path = spool_of(tmp_path, sid)
    path.parent.mkdir(parents=True)
    spool = Spool(path)
    for seq in range(1, 300_011):
        spool.append(seq, orjson.dumps([seq, 1.5, "custom", None, None, {}]))
    spool.close()
    cur = SessionCursor(id=sid, runner_seq=300_000)
    placed: list[int] = []

    def on_events(cur_: SessionCursor, _identity: object, events: list[list[object]], _b: object) -> None:
        for ev in events:
            assert ev[0] == cur_.runner_seq + 1
            placed.append(int(ev[0]))  # type: ignore[call-overload]
            cur_.runner_seq += 1

    ingest = SimpleNamespace(sessions_dir=tmp_path, _spool_at={}, max_message=1 << 20, _on_events=on_events,
                             count=lambda *a: None, log=SimpleNamespace(info=lambda *a, **k: None,
                                                                        error=lambda *a, **k: None))
    passes = 0
    while not SpoolReading._ingest_spool(ingest, cur, None):  # type: ignore[arg-type]
        passes += 1
        assert passes < 50, "the reading does not end"
    assert placed == list(range(300_001, 300_011)) and passes >= 1
    at_seq, at, ino = ingest._spool_at[sid]
    assert same_file(path, ino, at) and not same_file(path, ino + 1, at)
