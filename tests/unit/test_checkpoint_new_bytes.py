"""The checkpoint caps count what a checkpoint adds to the object store, not a file's apparent size
(runner/checkpoint_store.store_files, runner/objects.ObjectStore.new_limit): a file stored in chunks adds only its
chunks not stored yet (and its index), so a log grown past the per-file cap is still stored at each step, and the
session's cap is charged by new bytes; a file rewritten entirely adds all of it and is charged (or left out) in full.
Before, every cap compared a file's size: a log past ``MAX_FILE_BYTES`` was left out of every later checkpoint, and a
big file whose chunks were mostly stored reserved its whole size against the session's cap. The caps are lowered
with monkeypatch, as in test_checkpoint_caps.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import labd.runner.checkpoint as checkpoint
import labd.runner.checkpoint_store as checkpoint_store
from labd.runner.checkpoint import ObjectStore, load_manifest, restore
from labd.runner.checkpoint_store import store_files
from labd.runner.files import FileTracker
from labd.runner.objects import OverCap, SourceChanged, index_bytes
from tests.unit.durable_support import durable_ctx

_MIB = 1 << 20


def _scan(root: Path) -> FileTracker:
    tracker = FileTracker(root, lambda *a, **k: 0)
    tracker.scan(None)
    return tracker


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` (objects, indexes, temporary files)."""
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _checkpoints(events: list[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
    return [p for k, p, _ in events if k == "step.checkpoint"]


def _restored(tmp_path: Path, store: ObjectStore, cps: list[dict[str, Any]], cp: dict[str, Any], name: str) -> bytes:
    """The content of ``name`` as checkpoint ``cp`` holds it (its manifest resolved as a resume would: stored objects
    and the changes inline in the events ``cps``), restored into a new directory."""
    inline = {c["manifest"]: c["manifest_delta"] for c in cps if "manifest_delta" in c}
    manifest = load_manifest(lambda d: inline[d] if d in inline else store.get_json(d), cp["manifest"])[0]
    where = tmp_path / f"restored-{cp['name']}"
    restore(where, manifest, store)
    return (where / name).read_bytes()


def test_a_log_over_the_file_cap_is_stored_by_its_new_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 5 MiB log stored in chunks (under a 6 MiB per-file cap), then grown by appends to 8.5 MiB and 12 MiB: each
    later version is over the cap by size but adds only its new chunks (the last one, partial before, again) and its
    index, so it is stored (nothing left out), its new bytes are those chunks, and it restores exactly. Before, both
    were left out (``file_cap``)."""
    monkeypatch.setattr(checkpoint_store, "MAX_FILE_BYTES", 6 * _MIB)
    root = tmp_path / "w"
    root.mkdir()
    log = root / "train.log"
    log.write_bytes(os.urandom(5 * _MIB))
    store = ObjectStore(tmp_path / "objects")
    first = store_files(store, root, _scan(root).seen, {})
    assert first.left_out == [] and first.new_bytes >= 5 * _MIB
    tracker = _scan(root)
    for grow in (3 * _MIB + _MIB // 2, 3 * _MIB + _MIB // 2):
        with open(log, "ab") as f:
            f.write(os.urandom(grow))
        size = log.stat().st_size
        assert size > checkpoint_store.MAX_FILE_BYTES
        tracker.scan(None)
        got = store_files(store, root, tracker.seen, {})
        assert got.left_out == [], got.left_out
        digest, stored_size, _mode = got.manifest["train.log"]
        assert stored_size == size
        new_chunks = (grow + _MIB - 1) // _MIB + 1  # the appended chunks and the formerly last, partial one
        assert got.new_bytes <= new_chunks * _MIB + index_bytes(size), got.new_bytes
        with store.reader(digest) as f:
            assert f.read() == log.read_bytes()
    assert not [p for p in _files(store.root) if p.name.startswith(".tmp")]


def test_a_sparse_file_over_the_file_cap_adds_one_chunk_of_zeros(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64 MiB sparse file (a few bytes of data) under a 3 MiB per-file cap: it adds one chunk of zeros (stored once,
    as a hole), the chunk holding its data and its index, under the cap, so it is stored and restores identical.
    Before, its apparent size put it over the cap (``file_cap``)."""
    monkeypatch.setattr(checkpoint_store, "MAX_FILE_BYTES", 3 * _MIB)
    root = tmp_path / "w"
    root.mkdir()
    with open(root / "holes.bin", "wb") as f:
        f.seek(30 * _MIB + 7)
        f.write(b"data")
        f.truncate(64 * _MIB)
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, _scan(root).seen, {})
    assert got.left_out == [] and got.new_bytes <= 2 * _MIB + index_bytes(64 * _MIB), got
    again = tmp_path / "again"
    restore(again, got.manifest, store)
    assert (again / "holes.bin").read_bytes() == (root / "holes.bin").read_bytes()


def test_the_session_cap_is_charged_by_new_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a 10 MiB session cap, a 6 MiB log (stored at the first step) grows by 64 KiB at each of 5 more steps:
    every checkpoint stores it (none partial), each adding its changed last chunk and an index, and the objects
    directory stays under the cap. Before, each later step reserved the log's whole size (6 MiB more than the 4 MiB
    left), so from the second step on the log was left out (``session_cap``)."""
    monkeypatch.setattr(checkpoint_store, "MAX_SESSION_BYTES", 10 * _MIB)
    ctx, events = durable_ctx(tmp_path)
    log = ctx.workdir / "train.log"
    versions = []
    for i in range(6):
        with ctx.step(f"epoch {i}"), open(log, "ab") as f:
            f.write(os.urandom(6 * _MIB if i == 0 else 64 << 10))
        versions.append(log.read_bytes())
    cps = _checkpoints(events)
    assert [cp.get("partial", False) for cp in cps] == [False] * 6, [cp.get("left_out") for cp in cps]
    assert all(cp["new_bytes"] <= _MIB + index_bytes(len(versions[-1])) for cp in cps[1:]), cps
    objects = tmp_path / "s" / checkpoint.OBJECTS_DIR
    assert sum(p.stat().st_size for p in _files(objects)) < 10 * _MIB
    store = ObjectStore(objects)
    assert _restored(tmp_path, store, cps, cps[0], "train.log") == versions[0]
    assert _restored(tmp_path, store, cps, cps[3], "train.log") == versions[3]


def test_a_file_rewritten_entirely_each_step_is_charged_in_full(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds that must hold with chunks: a 5 MiB file rewritten with new content at each step adds all of it each
    time (new bytes at least 5 MiB per step), so under a 16 MiB session cap the fourth step's rewrite no longer fits
    (``session_cap``); and a 7 MiB file rewritten each step, over a 6 MiB per-file cap, is left out at every step
    without a chunk of it written (no object, no temporary file: it is read only up to the cap), as ``file_cap`` while
    the session has room for the file cap's worth, then as ``session_cap`` (the bound it was read against)."""
    monkeypatch.setattr(checkpoint_store, "MAX_FILE_BYTES", 6 * _MIB)
    monkeypatch.setattr(checkpoint_store, "MAX_SESSION_BYTES", 16 * _MIB)
    ctx, events = durable_ctx(tmp_path)
    objects = tmp_path / "s" / checkpoint.OBJECTS_DIR
    for i in range(4):
        with ctx.step(f"rewrite {i}"):
            (ctx.workdir / "model.bin").write_bytes(os.urandom(5 * _MIB))
            (ctx.workdir / "big.bin").write_bytes(os.urandom(7 * _MIB))
    cps = _checkpoints(events)
    assert {"path": "big.bin", "size": 7 * _MIB, "why": "file_cap"} in cps[0]["left_out"]
    for cp in cps[1:]:
        assert {"path": "big.bin", "size": 7 * _MIB, "why": "session_cap"} in cp["left_out"], cp
    assert all(cp["new_bytes"] >= 5 * _MIB for cp in cps[:3]), [cp["new_bytes"] for cp in cps]
    assert cps[3]["new_bytes"] == 0
    assert {"path": "model.bin", "size": 5 * _MIB, "why": "session_cap"} in cps[3]["left_out"]
    sizes = sum(p.stat().st_size for p in _files(objects))
    assert 15 * _MIB <= sizes < 16 * _MIB  # three versions of model.bin, none of big.bin
    assert not [p for p in _files(objects) if p.name.startswith(".tmp")]


def test_a_file_that_would_add_too_much_is_read_up_to_the_limit_and_nothing_written(tmp_path: Path) -> None:
    """ObjectStore.put_file with ``new_limit`` 2 MiB of a 10 MiB file of new content raises OverCap after reading at
    most the limit and a chunk, and writes nothing (no object, no temporary file); the same file with its first
    8 MiB stored adds less than the limit and is stored, with only its new chunks written."""
    src = tmp_path / "f.bin"
    data = os.urandom(10 * _MIB)
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store = ObjectStore(tmp_path / "objects")
    with pytest.raises(OverCap):
        store.bounded(len(data), None, 2 * _MIB).put_file(src, digest)
    assert _files(store.root) == []
    for i in range(8):  # an earlier, shorter version's chunks
        store.put_bytes(data[i * _MIB:(i + 1) * _MIB])
    got, written = store.bounded(len(data), None, 2 * _MIB + index_bytes(len(data))).put_file(src, digest)
    assert got == digest and 2 * _MIB < written <= 2 * _MIB + index_bytes(len(data))
    with store.reader(digest) as f:
        assert f.read() == data


def test_a_chunk_changed_between_its_two_reads_is_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file over its new-bytes limit by size is read through first and its new chunks read again; when a new chunk
    changes between the two reads (here: rewritten just before the second), the file is left out as changed
    (SourceChanged), and nothing of it is stored: no chunk, no index, no temporary file."""
    src = tmp_path / "f.bin"
    data = os.urandom(6 * _MIB)
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store = ObjectStore(tmp_path / "objects")
    for i in range(5):
        store.put_bytes(data[i * _MIB:(i + 1) * _MIB])
    before = set(_files(store.root))
    real_pread = os.pread

    def changed_first(fd: int, n: int, offset: int) -> bytes:
        os.pwrite(fd_w, b"X" * 10, offset)
        return real_pread(fd, n, offset)

    fd_w = os.open(src, os.O_WRONLY)
    monkeypatch.setattr(os, "pread", changed_first)
    try:
        with pytest.raises(SourceChanged):
            store.bounded(len(data), None, 2 * _MIB).put_file(src, digest)
    finally:
        os.close(fd_w)
    assert set(_files(store.root)) == before and not store.has(digest)
