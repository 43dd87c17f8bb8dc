"""The work-directory scan's bounds (labd.runner.files.FileTracker.scan, labd.runner.workfs.WorkDir.walk) and a
restore from a partial manifest (labd.runner.checkpoint.restore ``remove_extra=False``), found by an attack review:
a scan recursed (RecursionError past ~1,000 nested directories killed the runner), counted only regular files (300,000
empty directories made every scan take seconds), stopped silently at MAX_FILES, and a resume then removed every file
past the bound."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import labd.runner.files as files_mod
from labd.runner.checkpoint import ObjectStore, restore
from labd.runner.files import FileTracker, walk_files
from labd.runner.workfs import WorkDir


def _tracker(root: Path) -> tuple[FileTracker, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], node_id: str | None = None) -> int:
        events.append((kind, payload))
        return len(events)

    return FileTracker(root, emit), events


def _warnings(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [p["event"] for k, p in events if k == "log" and p.get("level") == "warning"]


def test_a_1500_deep_tree_is_scanned_without_error(tmp_path: Path) -> None:
    """1,500 nested directories (past Python's recursion limit, which os.walk's recursion hit): the scan finishes,
    finds the files at every depth (the deepest included), is not truncated, and walk_files agrees with it."""
    root = tmp_path / "w"
    root.mkdir()
    expected = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:  # made one level at a time (os.makedirs recurses too)
        for i in range(1500):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if i % 500 == 0 or i == 1499:
                expected.append("d/" * (i + 1) + "f.txt")
                wfd = os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(wfd, b"x")
                os.close(wfd)
    finally:
        os.close(fd)
    try:
        tracker, events = _tracker(root)
        assert tracker.scan("n1") == len(expected)
        assert not tracker.truncated and not _warnings(events)
        assert sorted(tracker.seen) == sorted(expected)
        assert sorted(rel for rel, _ in walk_files(root)) == sorted(expected)
    finally:  # removed deepest first, without recursion (the tmp_path cleanup would recurse)
        for i in range(1500, 0, -1):
            path = root / ("d/" * i)
            for name in os.listdir(path):
                os.unlink(path / name)
            os.rmdir(path)


def test_the_walk_order_and_skip_rules_are_those_of_os_walk(tmp_path: Path) -> None:
    """walk_files keeps the order of a sorted top-down os.walk (a directory's files, then its subdirectories by
    name) and skips dot directories and __pycache__."""
    root = tmp_path / "w"
    for rel in ["b.txt", "a/z.txt", "a/b/c.txt", "a/a.txt", "ab/x", ".hidden/h", "__pycache__/p.pyc", "c/.d/e",
                "c/f"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    assert [rel for rel, _ in walk_files(root)] == [
        "b.txt", "a/a.txt", "a/z.txt", "a/b/c.txt", "ab/x", "c/f"]


def test_more_directories_than_the_entry_bound_stop_the_scan_with_the_flag_set(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree of empty directories larger than MAX_ENTRIES: the walk stops at the bound (directories count, not
    only files), the tracker's ``truncated`` is set, one warning says so however many scans, and nothing seen before
    is reported deleted (the scan did not see the whole directory). Once the tree is small again the flag clears."""
    monkeypatch.setattr(files_mod, "MAX_ENTRIES", 50)
    root = tmp_path / "w"
    root.mkdir()
    (root / "a.txt").write_text("a")
    tracker, events = _tracker(root)
    assert tracker.scan("n1") == 1 and not tracker.truncated
    for i in range(200):
        (root / f"e{i:03}").mkdir()
    (root / "zz").mkdir()
    (root / "zz" / "late.txt").write_text("late")
    with WorkDir(root) as wd:
        listed = list(wd.walk(max_entries=50))
        assert wd.truncated
    assert [rel for rel, _ in listed] in ([], ["a.txt"])  # the root's listing is cut (in the filesystem's order)
    tracker.scan("n2")
    tracker.scan("n3")
    assert tracker.truncated
    assert "zz/late.txt" not in tracker.seen and "a.txt" in tracker.seen
    assert not [p for k, p in events if k == "file.deleted"]
    warned = _warnings(events)
    assert len(warned) == 1 and "more than 50 directory entries" in warned[0] and "partial" in warned[0], warned
    for i in range(200):
        (root / f"e{i:03}").rmdir()
    tracker.scan("n4")
    assert not tracker.truncated and "zz/late.txt" in tracker.seen and len(_warnings(events)) == 1


def test_more_files_than_the_file_bound_set_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_FILES is kept: past it the scan stops, sets ``truncated`` and warns once."""
    monkeypatch.setattr(files_mod, "MAX_FILES", 10)
    root = tmp_path / "w"
    root.mkdir()
    for i in range(15):
        (root / f"f{i:02}").write_text(str(i))
    tracker, events = _tracker(root)
    tracker.scan("n1")
    assert tracker.truncated and sorted(tracker.seen) == [f"f{i:02}" for i in range(10)]
    assert len(_warnings(events)) == 1 and "more than 10 files" in _warnings(events)[0]


def test_a_failing_scan_warns_and_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error of the walk itself (not a bound) is caught: the scan returns, says it once as a warning (not once
    per scan), marks the scan truncated (a checkpoint of it is partial) and reports nothing deleted."""
    root = tmp_path / "w"
    root.mkdir()
    (root / "a.txt").write_text("a")
    tracker, events = _tracker(root)
    tracker.scan("n1")

    class Broken(WorkDir):
        def walk(self, max_entries: int | None = None) -> Any:  # type: ignore[override]
            raise OSError(errno.EIO, "I/O error")
            yield  # a generator, as the real one

    monkeypatch.setattr(files_mod, "WorkDir", Broken)
    tracker.scan("n2")
    tracker.scan("n3")
    assert tracker.truncated and "a.txt" in tracker.seen
    assert not [p for k, p in events if k == "file.deleted"]
    warned = _warnings(events)
    assert len(warned) == 1 and "I/O error" in warned[0], warned


def test_restore_without_remove_extra_keeps_the_files_the_manifest_lacks(tmp_path: Path) -> None:
    """``restore(..., remove_extra=False)`` (a partial manifest) writes back what the manifest holds and removes
    nothing else; the default (a full manifest) still removes the extras."""
    store = ObjectStore(tmp_path / "objects")
    manifest = {"a.txt": [store.put_bytes(b"A"), 1, 0o644]}
    work = tmp_path / "w"
    (work / "z").mkdir(parents=True)
    (work / "a.txt").write_text("changed")
    (work / "z" / "results.csv").write_text("1,2")
    counts = restore(work, manifest, store, remove_extra=False)
    assert counts["removed"] == 0
    assert (work / "a.txt").read_bytes() == b"A" and (work / "z" / "results.csv").read_text() == "1,2"
    counts = restore(work, manifest, store)
    assert counts["removed"] == 1 and not (work / "z" / "results.csv").exists()
