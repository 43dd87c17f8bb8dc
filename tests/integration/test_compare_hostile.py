"""`labd compare` reads files of the sessions' work directories (for diffs): what a session put there after the file
scan must neither hang nor swell the daemon. The work directory is written by the session's own code, which the
daemon does not trust."""

from __future__ import annotations

import time

import pytest

from labd.ipc.client import LabdError
from tests.conftest import wait_until


def _swapped(c, sid: str) -> None:
    wait_until(lambda: any("swapped" in e["payload"].get("text", "") for e in c.history(sid, kinds=["output"])),
               timeout=60, what=f"{sid} swapped its data.txt")


def _data_row(comparison: dict) -> dict:
    return next(r for r in comparison["files"] if r["path"] == "data.txt")


def _added(diff: str | None) -> list[str]:
    """The lines a unified diff adds (nothing was read of a file it shows as absent)."""
    return [x for x in (diff or "").splitlines() if x.startswith("+") and not x.startswith("+++")]


def test_compare_with_a_file_swapped_for_a_fifo_answers_and_keeps_reads_working(shared_daemon) -> None:
    """A session replaces its recorded ``data.txt`` (a few bytes) with a FIFO nobody writes. Comparing it with
    another session answers at once, reading nothing of that file (its diff shows it absent), and later long reads
    (another comparison) still run.
    Before, the daemon's read worker opened the FIFO and blocked for good: the comparison never answered, and two
    such requests took both read workers, so every later compare, replay or branch hung (then ``busy``)."""
    with shared_daemon.client(timeout=60) as c:
        base = c.start("labd_testflows:swap_after_scan", params={"tag": "base"})
        assert c.wait(base, timeout=60)["status"] == "completed"
        fifo = c.start("labd_testflows:swap_after_scan", params={"tag": "fifo", "swap": "fifo", "hold": 120})
        _swapped(c, fifo)
        other = c.start("labd_testflows:swap_after_scan", params={"tag": "other"})
        assert c.wait(other, timeout=60)["status"] == "completed"
        try:
            for _ in range(3):  # more than the daemon's read workers
                t0 = time.monotonic()
                row = _data_row(c.compare(base, fifo))
                assert time.monotonic() - t0 < 20
                assert row["states"] == ["changed"] and not _added(row["diffs"][0]), row
            row = _data_row(c.compare(base, other))  # the read workers are free
            assert row["diffs"][0] and "+other" in row["diffs"][0], row
        finally:
            c.kill(fifo)


def test_compare_reads_no_more_of_a_file_than_a_diff_takes(shared_daemon) -> None:
    """A session replaces its recorded ``data.txt`` (a few bytes) with a 512 MiB sparse file (it costs no disk).
    The comparison reads nothing of it (over the diff limit: its diff shows it absent) and the daemon's
    memory does not grow by the file's size. Before, the daemon read the whole file into memory (and could be
    made to read any size, to its end: an out-of-memory kill), then diffed it."""
    import psutil

    with shared_daemon.client(timeout=60) as c:
        base = c.start("labd_testflows:swap_after_scan", params={"tag": "base"})
        assert c.wait(base, timeout=60)["status"] == "completed"
        big = c.start("labd_testflows:swap_after_scan",
                      params={"tag": "big", "swap": "sparse", "size_mb": 512, "hold": 120})
        _swapped(c, big)
        daemon = psutil.Process(c.status()["pid"])
        try:
            before = daemon.memory_info().rss
            row = _data_row(c.compare(base, big))
            assert row["states"] == ["changed"] and not _added(row["diffs"][0]), {**row, "diffs": "..."}
            grown = daemon.memory_info().rss - before
            assert grown < 200 << 20, f"the daemon grew {grown >> 20} MiB"
        finally:
            c.kill(big)


def test_compare_of_a_session_with_itself_is_refused_naming_both_references(shared_daemon) -> None:
    """The same session given twice, by id and by its name, is a ``bad_request`` that names both references (a
    comparison with itself says nothing, and read the record twice); two different sessions still compare."""
    with shared_daemon.client(timeout=60) as c:
        one = c.start("demo.count", params={"n": 1}, name="compare-self-one")
        two = c.start("demo.count", params={"n": 1})
        for sid in (one, two):
            assert c.wait(sid, timeout=60)["status"] == "completed"
        with pytest.raises(LabdError) as err:
            c.compare(one, two, "compare-self-one")
        assert err.value.code == "bad_request"
        assert "'compare-self-one'" in err.value.message and one in err.value.message
        assert len(c.compare(one, two)["sessions"]) == 2
