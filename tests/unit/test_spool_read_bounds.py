"""What the daemon reads of a session's spool is bounded in work, not only in memory (attack review): the spool is
written by a process running the session's code, which can fill it with records claiming gigabytes (a sparse file
costs it nothing) or with any number of records to skip, and the daemon reads it on its ingest thread, which
records every session."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from labd.daemon.spools import MAX_CHECKED, resume_at, spool_ino, spooled_events
from labd.runner.spool import HEADER, Spool

pytestmark = pytest.mark.timeout(120)


def test_records_claiming_gigabytes_are_taken_from_their_head_one_per_pass(tmp_path: Path) -> None:
    """Three records of 2 GiB each in a sparse file (their checksums made up): a pass takes one, as
    ``event.truncated`` with its size, without reading its body, and says there is more; before, each was read
    whole to check its checksum (seconds of the ingest thread per record, every pass) and then ended the read."""
    path = tmp_path / "events.spool"
    size = 1 << 31
    with open(path, "wb") as f:
        for seq in (1, 2, 3):
            f.write(HEADER.pack(size, 0xDEADBEEF, seq) + b'[%d,1.5,"custom",' % seq)
            f.seek(f.tell() + size - len(b'[1,1.5,"custom",'))
        f.truncate()
    chunk = spooled_events(path, 0, max_event=1 << 20, max_events=5000, max_bytes=4 << 20)
    assert [(e[0], e[2], e[5]) for e in chunk.events] == [(1, "event.truncated", {"kind": "custom", "size": size})]
    assert chunk.more and chunk.end == HEADER.size + size
    rest = spooled_events(path, 1, start=chunk.end, max_event=1 << 20, max_events=5000, max_bytes=4 << 20)
    assert [e[0] for e in rest.events] == [2] and rest.more


def test_a_record_up_to_the_checked_size_is_still_checked(tmp_path: Path) -> None:
    """A record longer than a message but within :data:`MAX_CHECKED` keeps its checksum check: a damaged one ends
    the read there, as before (a crash's torn write is never taken for an event)."""
    path = tmp_path / "events.spool"
    body = b'[1,1.5,"custom",null,null,{"x":"' + b"y" * (2 << 20) + b'"}]'
    assert len(body) < MAX_CHECKED
    with open(path, "wb") as f:
        f.write(HEADER.pack(len(body), 12345, 1) + body)
    assert spooled_events(path, 0, max_event=1 << 20).events == []


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


def test_a_remembered_place_in_a_spool_its_runner_emptied_or_replaced_is_not_used(tmp_path: Path) -> None:
    """A live runner empties or rewrites its spool behind its acknowledgements: a place the daemon remembered in it
    is used only if the file is the same and a later record starts there; otherwise reading starts over."""
    path = tmp_path / "events.spool"
    spool = Spool(path)
    for seq in (1, 2, 3):
        spool.append(seq, orjson.dumps([seq, 1.5, "custom", None, None, {}]))
    chunk = spooled_events(path, 0, max_events=2)
    at, ino = chunk.end, spool_ino(path)
    assert resume_at(path, 2, at, ino) == at  # the same file, record 3 starts there
    assert resume_at(path, 2, at, ino + 1) == 0  # another file (rewritten)
    spool.truncate()  # emptied in place: zeros where record 3 was
    assert resume_at(path, 2, at, ino) == 0
    spool.close()
