"""Attacks on the checkpoint caps of what a file adds (runner/objects.ObjectStore.put_file, new_limit): the session's
own code runs in the runner's process and can change a file between its scan, the store's ``fstat`` of it and its
read. Found by the review of 2026-12-02."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import labd.runner.checkpoint_store as checkpoint_store
import labd.runner.objects as objects
from labd.runner.checkpoint import ObjectStore
from labd.runner.checkpoint_store import SessionBudget, store_files
from labd.runner.files import FileTracker
from labd.runner.objsource import Source

_MIB = 1 << 20


def _work_with(tmp_path: Path, name: str, size: int) -> tuple[Path, Path, bytes, FileTracker]:
    """A work directory with one file ``name`` of ``size`` random bytes, scanned: (root, file, its bytes, tracker)."""
    root = tmp_path / "w"
    root.mkdir()
    path = root / name
    data = os.urandom(size)
    path.write_bytes(data)
    tracker = FileTracker(root, lambda *a, **k: 0)
    tracker.scan(None)
    return root, path, data, tracker


def _shrunk_at_open(monkeypatch: pytest.MonkeyPatch, path: Path, data: bytes) -> None:
    """Make ``path`` empty just after the store opens it (so its ``fstat`` says 0 bytes) and hold ``data`` again when
    the store first reads it: the race a thread of the session can win."""
    real_open, state = objects.open_source, {"armed": False}

    def open_then_truncate(src: Path, within: Any) -> int:
        fd = real_open(src, within)
        if Path(src) == path:
            os.truncate(path, 0)
            state["armed"] = True
        return fd

    class RestoredOnRead(Source):
        def read(self, n: int) -> bytes:
            if state["armed"]:
                state["armed"] = False
                with open(path, "r+b") as f:
                    f.write(data)
            return super().read(n)

    monkeypatch.setattr(objects, "open_source", open_then_truncate)
    monkeypatch.setattr(objects, "Source", RestoredOnRead)


def test_a_file_shrunk_at_open_and_restored_cannot_pass_the_file_cap(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A 12 MiB file of new content under a 6 MiB per-file cap is left out (it would add 12 MiB). When the session
    empties it right after the store opens it and writes it back before the first read, the store sees a small file
    (``fstat``: 0 bytes) and copies it whole: that copy must still stop at what the file may add, so nothing over the
    cap is written and the file is left out. Before, the whole copy was bounded only by the scan's size: 12 MiB were
    stored past the 6 MiB cap (and ``give_back`` got a negative amount)."""
    monkeypatch.setattr(checkpoint_store, "MAX_FILE_BYTES", 6 * _MIB)
    root, big, data, tracker = _work_with(tmp_path, "big.bin", 12 * _MIB)
    store = ObjectStore(tmp_path / "objects")
    _shrunk_at_open(monkeypatch, big, data)
    got = store_files(store, root, tracker.seen, {})
    assert got.new_bytes <= 6 * _MIB, got
    assert "big.bin" not in got.manifest and [why for _p, _s, why in got.left_out] == ["changed"], got.left_out
    assert not store.has(hashlib.sha256(data).hexdigest())


def test_a_file_shrunk_at_open_and_restored_cannot_pass_the_session_cap(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race with a session budget of 2 MiB left: the file (8 MiB) is not stored, and the budget's count is
    back where it was (no reservation kept, none given back twice). Before, 8 MiB were stored against 2 MiB left and
    the budget counted 6 MiB over its cap."""
    monkeypatch.setattr(checkpoint_store, "MAX_SESSION_BYTES", 10 * _MIB)
    root, big, data, tracker = _work_with(tmp_path, "big.bin", 8 * _MIB)
    objects_dir = tmp_path / "objects"
    store = ObjectStore(objects_dir)
    store.put_bytes(os.urandom(8 * _MIB))  # the session's objects so far: 2 MiB left
    budget = SessionBudget(objects_dir)
    used = budget.used
    _shrunk_at_open(monkeypatch, big, data)
    got = store_files(store, root, tracker.seen, {}, budget)
    assert got.new_bytes == 0 and "big.bin" not in got.manifest, got
    assert budget.used == used


def test_a_big_file_is_not_read_when_its_index_alone_does_not_fit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file stored in chunks adds at least its index (~67 bytes a chunk), whatever chunks are stored: with less than
    that left in the session's budget, a 64 MiB log grown by a line (all but its last chunk stored) is left out
    (``session_cap``) without being opened, and the budget's count is unchanged. Before, anything over one byte left
    let it be read whole (a log of 100 GiB: 100 GiB read at every step) only to be left out at its last chunk."""
    root, log, _data, tracker = _work_with(tmp_path, "train.log", 64 * _MIB)
    objects_dir = tmp_path / "objects"
    store = ObjectStore(objects_dir)
    assert store_files(store, root, tracker.seen, {}).left_out == []
    with open(log, "ab") as f:
        f.write(b"one more line\n")
    tracker.scan(None)
    budget = SessionBudget(objects_dir)
    monkeypatch.setattr(checkpoint_store, "MAX_SESSION_BYTES", budget.used + 1000)  # under the index's 64 * 67 bytes
    opened: list[Path] = []
    real_open = objects.open_source
    monkeypatch.setattr(objects, "open_source", lambda src, within: opened.append(src) or real_open(src, within))
    used = budget.used
    got = store_files(store, root, tracker.seen, {}, budget)
    assert got.left_out == [("train.log", 64 * _MIB + 14, "session_cap")] and opened == [], (got, opened)
    assert budget.used == used
