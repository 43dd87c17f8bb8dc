"""The spool sheds what the daemon acknowledged (Spool.behind_acks), and a kill at any point keeps every
unacknowledged record: the runner's side of "nothing is lost" while the file is kept small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labd.runner import spool as spool_module
from labd.runner.spool import Spool, read_spool
from tests.conftest import wait_until
from tests.unit.test_channel import FakeDaemon, _channel
from tests.unit.test_channel_speed import Receiver


def _filled(path: Path, n: int, size: int = 100) -> tuple[Spool, list[bytes]]:
    sp = Spool(path)
    bodies = [bytes([65 + i % 26]) * size for i in range(n)]
    for i, body in enumerate(bodies, 1):
        sp.append(i, body)
    return sp, bodies


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds in bytes instead of MiB, so a few records cross them."""
    monkeypatch.setattr(spool_module, "SPOOL_TRUNCATE_BYTES", 1_000)
    monkeypatch.setattr(spool_module, "SPOOL_COMPACT_BYTES", 2_000)


def test_everything_acknowledged_empties_it(tmp_path: Path, small_limits: None) -> None:
    """Over the truncate size with nothing unacknowledged: the spool starts again from empty."""
    sp, _ = _filled(tmp_path / "s", 20)
    sp.behind_acks(21, [], [])
    assert sp.size == 0 and list(read_spool(tmp_path / "s")) == []
    sp.close()


def test_emptied_in_place_only_what_follows_is_read(tmp_path: Path, small_limits: None) -> None:
    """A small spool is emptied in place (its file and pages kept, its records zeroed): a reader, or a runner
    reopening it, finds exactly the records appended since, never one of the acknowledged ones behind them,
    even when the new ones are shorter and end inside an old record."""
    path = tmp_path / "s"
    sp, _ = _filled(path, 20)
    length = path.stat().st_size
    sp.behind_acks(21, [], [])
    assert sp.size == 0 and list(read_spool(path)) == []
    assert path.stat().st_size == length  # kept: no new blocks, no new page faults
    fresh = [(21, b"[21]"), (22, b"[22,1]")]
    for seq, body in fresh:
        sp.append(seq, body)
    assert list(read_spool(path)) == fresh
    again = Spool(path)  # what a resumed runner does with a spool its predecessor left
    assert again.size == sp.size
    again.close()
    sp.close()


def test_a_kill_while_emptying_in_place_leaves_nothing_unacknowledged_behind(tmp_path: Path,
                                                                            small_limits: None) -> None:
    """The zeroing runs from the front: a runner killed half way leaves zeros ahead of acknowledged records,
    and the reading ends at the zeros (the daemon has all of them already). A runner that reopens that spool
    (a resumed session's) and appends past where the zeros ended never has an old record read after its own:
    opening cuts the file after its last intact record."""
    path = tmp_path / "s"
    sp, _ = _filled(path, 20)
    half = sp.size // 2
    with open(path, "r+b") as f:  # the state after zeroing the first half, as a kill leaves it
        f.write(bytes(half))
    assert list(read_spool(path)) == []
    sp._unmap()  # noqa: SLF001 - the killed runner's mapping and file, gone with it (close() would cut the file)
    os.close(sp._fd)  # noqa: SLF001
    resumed = Spool(path)
    assert resumed.size == 0
    fresh = [(100 + i, bytes([97 + i % 26]) * 100) for i in range(15)]  # same size: they end on an old boundary
    for seq, body in fresh:
        resumed.append(seq, body)
    assert list(read_spool(path)) == fresh
    resumed.close()


def test_a_spool_over_the_reuse_size_gives_its_disk_space_back(tmp_path: Path, small_limits: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool that grew past SPOOL_REUSE_BYTES (a long daemon outage) is cut back when all of it is
    acknowledged, not kept at its largest."""
    monkeypatch.setattr(spool_module, "SPOOL_REUSE_BYTES", spool_module.SEGMENT)
    path = tmp_path / "s"
    sp, _ = _filled(path, 6000, size=200)  # ~1.3 MiB: a second segment
    assert path.stat().st_size == 2 * spool_module.SEGMENT
    sp.behind_acks(6001, [], [])
    assert path.stat().st_size == spool_module.SEGMENT and list(read_spool(path)) == []
    sp.append(6001, b"[6001]")
    assert list(read_spool(path)) == [(6001, b"[6001]")]
    sp.close()


def test_appends_take_page_faults_in_batches_not_one_per_page(tmp_path: Path, small_limits: None) -> None:
    """Each first store into a page of the mapped file is a page fault, which amid a workflow's own work costs
    tens of microseconds. The pages ahead are populated 64 at a time, so ~60 pages of records fault inside a
    handful of appends, and an emptied-in-place spool refills with none (counted, not timed)."""
    import resource

    def faulting_appends(sp: Spool, first: int, n: int) -> int:
        hits = 0
        for seq in range(first, first + n):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            sp.append(seq, b"y" * 220)
            hits += resource.getrusage(resource.RUSAGE_THREAD).ru_minflt != before
        return hits

    sp = Spool(tmp_path / "s")
    assert faulting_appends(sp, 1, 1000) <= 4  # ~236 KB: one page per ~17 records, 56 faults one by one
    sp.behind_acks(1001, [], [])
    assert faulting_appends(sp, 1001, 1000) == 0
    assert len(list(read_spool(tmp_path / "s"))) == 1000
    sp.close()


def test_a_kernel_without_populate_still_gets_every_record(tmp_path: Path, small_limits: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 5.14 madvise refuses MADV_POPULATE_WRITE (EINVAL): the spool falls back to touching pages
    and records are written and read back exactly as with it (stood in for by an advice no kernel knows)."""
    monkeypatch.setattr(spool_module, "MADV_POPULATE_WRITE", 0x7FFF)
    path = tmp_path / "s"
    sp, bodies = _filled(path, 4000, size=300)  # past the first populated chunk and the first segment
    assert list(read_spool(path)) == list(enumerate(bodies, 1))
    sp.behind_acks(4001, [], [])
    sp.append(4001, b"[4001]")
    assert list(read_spool(path)) == [(4001, b"[4001]")]
    sp.close()


def test_a_large_mostly_acknowledged_spool_is_rewritten_to_its_tail(tmp_path: Path, small_limits: None) -> None:
    """Over the compact size with a small unacknowledged tail (given in two parts, as the channel holds them):
    the file holds exactly that tail, with its sequence numbers."""
    sp, bodies = _filled(tmp_path / "s", 30)
    sp.behind_acks(27, bodies[26:28], bodies[28:])
    assert list(read_spool(tmp_path / "s")) == [(i, bodies[i - 1]) for i in range(27, 31)]
    sp.close()


def test_a_mostly_unacknowledged_or_small_spool_is_left_as_it_is(tmp_path: Path, small_limits: None) -> None:
    """Rewriting most of a file to save little is not done; nor is anything under the truncate size."""
    sp, bodies = _filled(tmp_path / "big", 30)
    sp.behind_acks(5, bodies[4:], [])
    assert len(list(read_spool(tmp_path / "big"))) == 30
    small, _ = _filled(tmp_path / "small", 5)
    small.behind_acks(6, [], [])
    assert len(list(read_spool(tmp_path / "small"))) == 5
    sp.close()
    small.close()


def test_a_running_channel_keeps_its_spool_small_behind_the_acks(endpoint: str, daemon: FakeDaemon,
                                                                 small_limits: None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with a fake daemon that acknowledges everything: once all is acknowledged the spool holds no
    record (truncated behind the acks), and the channel closes and removes it."""
    # any size counts here: however the last acks fall, the one after the last event finds the spool non-empty
    monkeypatch.setattr(spool_module, "SPOOL_TRUNCATE_BYTES", 1)
    ch = _channel(endpoint, daemon, spool=tmp_path / "events.spool")
    with Receiver(daemon):  # it acknowledges everything
        for i in range(200):
            ch.emit("output", {"stream": "stdout", "text": f"line {i} " + "x" * 50})
        path = ch.spool_path
        assert path is not None
        wait_until(lambda: not list(read_spool(path)), timeout=30, what="the spool emptied behind the acks")
        assert ch.close(timeout=10) and not path.exists()
