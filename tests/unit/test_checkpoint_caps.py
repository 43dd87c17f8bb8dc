"""The caps on what one checkpoint stores (labd.runner.checkpoint.store_files, MAX_FILE_BYTES and MAX_NEW_BYTES) and
sparse objects, found by an attack review: a checkpoint copied every file whole, a sparse one by its apparent size
(a 0.75 GiB ``truncate`` cost 1.6 GB of objects over two steps), with no cap, so a session's code could fill the
disk through its checkpoints. The caps are lowered here as MAX_FILES is in test_scan_bounds.py (monkeypatch)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

import labd.runner.checkpoint as checkpoint
from labd.runner.checkpoint import ObjectStore, manifest_object, restore, store_files
from labd.runner.durable import MAX_LEFT_OUT, Durable
from labd.runner.files import FileTracker
from tests.unit.durable_support import durable_ctx

_MIB = 1 << 20


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint stores no file over 1,000 bytes and at most 2,500 bytes of new objects."""
    monkeypatch.setattr(checkpoint, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(checkpoint, "MAX_NEW_BYTES", 2500)


def _scan(root: Path) -> FileTracker:
    tracker = FileTracker(root, lambda *a, **k: 0)
    tracker.scan(None)
    return tracker


def _on_disk(root: Path) -> int:
    """Bytes allocated on disk under ``root`` (a sparse file's holes take none)."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def test_files_are_stored_smallest_first_within_both_caps(tmp_path: Path, small_caps: None) -> None:
    """A file over the per-file cap is left out (``file_cap``); the others are stored smallest first until the next
    would pass the checkpoint's cap on new bytes (``checkpoint_cap``); a file whose object is already stored costs
    nothing against it; new_bytes is what was copied, and stays within the cap."""
    root = tmp_path / "w"
    root.mkdir()
    for name, size in (("big.bin", 1001), ("a.txt", 100), ("b.txt", 900), ("c.txt", 900), ("d.txt", 900),
                       ("old.txt", 800)):
        (root / name).write_bytes(name.encode()[:1] * size)
    store = ObjectStore(tmp_path / "objects")
    old = store.put_bytes((root / "old.txt").read_bytes())  # stored by an earlier checkpoint
    tracker = _scan(root)
    got = store_files(store, root, tracker.seen, tracker.modes)
    assert sorted(got.left_out) == [("big.bin", 1001, "file_cap"), ("d.txt", 900, "checkpoint_cap")]
    assert sorted(got.manifest) == ["a.txt", "b.txt", "c.txt", "old.txt"]
    assert got.manifest["old.txt"][0] == old
    assert (got.new_objects, got.new_bytes, got.total) == (3, 1900, 2700)
    for key, (digest, size, _mode) in got.manifest.items():
        assert store.path(digest).read_bytes() == (root / key).read_bytes() and size == (root / key).stat().st_size


def test_files_of_the_same_content_cost_their_bytes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three files of the same 900 bytes in one checkpoint under a 1,000-byte cap on new bytes: one object is stored,
    the two others name it and cost nothing against the cap, so none is left out and new_bytes is 900."""
    monkeypatch.setattr(checkpoint, "MAX_NEW_BYTES", 1000)
    root = tmp_path / "w"
    root.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_bytes(b"s" * 900)
    tracker = _scan(root)
    got = store_files(ObjectStore(tmp_path / "objects"), root, tracker.seen, tracker.modes)
    assert got.left_out == [] and sorted(got.manifest) == ["a.txt", "b.txt", "c.txt"]
    assert (got.new_objects, got.new_bytes, got.total) == (1, 900, 2700)


def test_a_file_grown_past_the_cap_since_its_scan_is_left_out_without_a_trace(tmp_path: Path,
                                                                             small_caps: None) -> None:
    """A file the scan saw small that grew past the per-file cap before its copy: the copy stops at the cap, the
    file is left out (``file_cap``, with the size the scan saw), and no object nor temporary file of it stays."""
    root = tmp_path / "w"
    root.mkdir()
    (root / "grows.log").write_bytes(b"x" * 10)
    tracker = _scan(root)
    (root / "grows.log").write_bytes(b"x" * 5000)
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, tracker.seen, tracker.modes)
    assert got.left_out == [("grows.log", 10, "file_cap")] and got.manifest == {} and got.new_bytes == 0
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]


def test_a_sparse_file_counts_its_apparent_size_against_the_caps(tmp_path: Path, small_caps: None) -> None:
    """A sparse file of 64 KiB apparent size that takes (almost) nothing on disk is over a 1,000-byte cap all the
    same: it is counted by what reading it yields, not by its allocated blocks."""
    root = tmp_path / "w"
    root.mkdir()
    with open(root / "holes.bin", "wb") as f:
        f.truncate(64 << 10)
    tracker = _scan(root)
    got = store_files(ObjectStore(tmp_path / "objects"), root, tracker.seen, tracker.modes)
    assert got.left_out == [("holes.bin", 64 << 10, "file_cap")] and got.manifest == {}


def test_a_sparse_file_is_stored_and_restored_with_its_holes(tmp_path: Path) -> None:
    """Under the caps, a 256 MiB sparse file (4 KiB of data in the middle) is stored as a sparse object that takes a
    few MiB on disk at most, under its real sha256; a restore writes it back identical and sparse too."""
    root = tmp_path / "w"
    root.mkdir()
    with open(root / "holes.bin", "wb") as f:
        f.seek(100 * _MIB + 5)
        f.write(os.urandom(4096))
        f.truncate(256 * _MIB)
    tracker = _scan(root)
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, tracker.seen, tracker.modes)
    digest, size, _mode = got.manifest["holes.bin"]
    assert (size, got.new_bytes, got.left_out) == (256 * _MIB, 256 * _MIB, [])
    assert _on_disk(tmp_path / "objects") < 4 * _MIB
    with open(store.path(digest), "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest
    again = tmp_path / "again"
    restore(again, got.manifest, store)
    assert (again / "holes.bin").stat().st_size == 256 * _MIB and _on_disk(again) < 4 * _MIB
    with open(again / "holes.bin", "rb") as a, open(root / "holes.bin", "rb") as b:
        assert hashlib.file_digest(a, "sha256").hexdigest() == hashlib.file_digest(b, "sha256").hexdigest()


def test_a_checkpoint_that_leaves_files_out_is_partial_and_names_them(tmp_path: Path, small_caps: None) -> None:
    """A step that writes a file over the cap and more files than fit: its ``step.checkpoint`` is ``partial``,
    ``left_out`` names at most MAX_LEFT_OUT of them with their size and why, ``left_out_more`` counts the rest, and
    one warning says so; a later step leaving files out is partial too but not warned about again. A step whose
    files all fit is not partial."""
    ctx, events = durable_ctx(tmp_path)
    with ctx.step("fits"):
        (ctx.workdir / "ok.txt").write_text("ok")
    with ctx.step("too much"):
        (ctx.workdir / "big.bin").write_bytes(b"b" * 2000)
        for i in range(MAX_LEFT_OUT + 5):
            (ctx.workdir / f"f{i:02}.txt").write_bytes(b"%02d" % i + b"-" * 498)  # 500 bytes: 5 fit
    with ctx.step("again"):
        (ctx.workdir / "big.bin").write_bytes(b"c" * 3000)
    cps = [p for k, p, _ in events if k == "step.checkpoint"]
    assert [c["name"] for c in cps] == ["fits", "too much", "again"]
    assert "partial" not in cps[0] and "left_out" not in cps[0]
    second = cps[1]
    assert second["partial"] is True and second["files"] == 1 + 5 and second["new_bytes"] == 2500
    assert second["left_out"][0] == {"path": "f05.txt", "size": 500, "why": "checkpoint_cap"}
    assert {"path": "big.bin", "size": 2000, "why": "file_cap"} not in second["left_out"]  # the largest: last
    assert len(second["left_out"]) == MAX_LEFT_OUT and second["left_out_more"] == 1
    assert cps[2]["partial"] is True
    assert {"path": "big.bin", "size": 3000, "why": "file_cap"} in cps[2]["left_out"]
    warnings = [p["event"] for k, p, _ in events if k == "log" and p.get("logger") == "labd.runner.durable"]
    assert len(warnings) == 1 and "'too much' left out f05.txt (500 bytes)" in warnings[0], warnings


def test_a_resume_from_a_capped_checkpoint_keeps_the_file_and_does_not_report_it_deleted(tmp_path: Path) -> None:
    """The restore of a partial checkpoint that left big.bin out (the record has it: its ``file.created``) removes
    nothing and reports no ``file.deleted`` for big.bin, which is still there; a file the record has that is really
    gone is still reported deleted."""
    root = tmp_path / "s" / "work"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "big.bin").write_bytes(b"big")
    store = ObjectStore(tmp_path / "s" / checkpoint.OBJECTS_DIR)
    a = store.put_bytes(b"a")
    manifest: dict[str, list[Any]] = {"a.txt": [a, 1, 0o644]}
    digest = store.put_bytes(orjson.dumps(manifest_object(manifest, None), option=orjson.OPT_SORT_KEYS))
    events: list[tuple[str, Any]] = []
    seed = {"mode": "resume", "steps": {}, "manifest": digest, "files": manifest, "partial": True,
            "recorded": {"a.txt": a, "big.bin": "b" * 64, "gone.txt": "c" * 64}}
    tracker = FileTracker(root, lambda kind, payload, node=None: events.append((kind, payload)) or 0)
    Durable(lambda kind, payload, node=None: events.append((kind, payload)) or 0, tmp_path / "s", root, tracker,
            seed).restore_workdir()
    assert (root / "big.bin").read_bytes() == b"big"
    deleted = [p["path"] for k, p in events if k == "file.deleted"]
    assert deleted == ["gone.txt"], events
    restored = [p for k, p in events if k == "checkpoint.restored"]
    assert restored[0]["removed"] == 0
