"""The caps on what one checkpoint stores (runner/checkpoint_store.store_files, MAX_FILE_BYTES and MAX_NEW_BYTES) and
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
import labd.runner.checkpoint_store as checkpoint_store
from labd.runner.checkpoint import ObjectStore, manifest_object, restore
from labd.runner.checkpoint_store import SessionBudget, store_files
from labd.runner.durable import MAX_LEFT_OUT, Durable
from labd.runner.files import FileTracker
from tests.unit.durable_support import durable_ctx

_MIB = 1 << 20


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint stores no file over 1,000 bytes and at most 2,500 bytes of new objects."""
    monkeypatch.setattr(checkpoint_store, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(checkpoint_store, "MAX_NEW_BYTES", 2500)


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
    monkeypatch.setattr(checkpoint_store, "MAX_NEW_BYTES", 1000)
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
    """A file the scan saw small that grew past the per-file cap before its copy: the copy stops at the size the scan
    saw (so within the caps), the file is left out as ``changed`` (with the size the scan saw), and no object nor
    temporary file of it stays."""
    root = tmp_path / "w"
    root.mkdir()
    (root / "grows.log").write_bytes(b"x" * 10)
    tracker = _scan(root)
    (root / "grows.log").write_bytes(b"x" * 5000)
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, tracker.seen, tracker.modes)
    assert got.left_out == [("grows.log", 10, "changed")] and got.manifest == {} and got.new_bytes == 0
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
    """Under the caps, a 256 MiB sparse file (4 KiB of data in the middle) is stored as chunks (its 1 MiB of zeros
    once: a few MiB of new objects, apparent size, and as little on disk), under its real sha256; a restore writes
    it back identical and sparse too."""
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
    assert (size, got.left_out) == (256 * _MIB, []) and got.new_bytes < 4 * _MIB, got.new_bytes
    assert _on_disk(tmp_path / "objects") < 4 * _MIB
    with store.reader(digest) as f:
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


# ---- files that change between the scan and the copy (an attack review: swapped for a symlink, saved atomically) --


def _objects(store: ObjectStore) -> dict[str, bytes]:
    """Every object file of ``store`` (name -> content), temporary files included."""
    return {p.name: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} if store.root.exists() else {}


def test_a_file_swapped_for_a_symlink_after_its_scan_is_never_stored(tmp_path: Path) -> None:
    """The scan sees regular files z and sub/y; before the copy, z is replaced by a symlink to a secret outside the
    work directory and sub by a symlink to an outside directory holding a y. Neither target is read: no object holds
    the secret (nor the outside y), z and sub/y are not in the manifest (no regular file is there: as if deleted), the
    file whose object is stored is stored as scanned, and every manifest entry's object holds its digest and size."""
    root = tmp_path / "w"
    (root / "sub").mkdir(parents=True)
    (root / "z").write_text("regular\n" * 100)
    (root / "sub" / "y").write_text("inner\n" * 100)
    (root / "keep.txt").write_text("keep")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y").write_text("outside y\n")
    tracker = _scan(root)
    assert sorted(tracker.seen) == ["keep.txt", "sub/y", "z"]
    os.symlink(secret, root / "z.l")
    os.replace(root / "z.l", root / "z")
    (root / "sub" / "y").unlink()
    (root / "sub").rmdir()
    os.symlink(outside, root / "sub")
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, tracker.seen, tracker.modes)
    assert sorted(got.manifest) == ["keep.txt"] and got.left_out == []
    contents = _objects(store).values()
    assert b"TOP SECRET\n" not in contents and b"outside y\n" not in contents
    for key, (digest, size, _mode) in got.manifest.items():
        data = store.path(digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest and len(data) == size == (root / key).stat().st_size


def test_a_file_replaced_by_another_regular_file_after_its_scan_is_left_out_as_changed(tmp_path: Path) -> None:
    """The scan hashes z; before the copy, an atomic save (write z.tmp, rename it over z) gives z another content of
    the same size. z is left out (``changed``, the size the scan saw), not stored under the digest its scan recorded
    nor under any other: the store holds no object of either content, and no temporary file."""
    root = tmp_path / "w"
    root.mkdir()
    (root / "z").write_bytes(b"A" * 4000)
    tracker = _scan(root)
    scanned = tracker.seen["z"][2]
    (root / "z.tmp").write_bytes(b"B" * 4000)
    os.replace(root / "z.tmp", root / "z")
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, tracker.seen, tracker.modes)
    assert got.left_out == [("z", 4000, "changed")] and got.manifest == {} and got.new_bytes == 0
    assert not store.has(scanned) and _objects(store) == {}


def test_a_temporary_file_gone_since_the_scan_does_not_fail_the_checkpoint(tmp_path: Path) -> None:
    """A file the scan saw that is gone before its copy is simply not in the checkpoint (not left out: as if deleted),
    also when its name is taken meanwhile by something that is not a regular file: a temporary file renamed away and
    its name reused by a dangling symlink (what `except FileNotFoundError: if lexists(...): raise` turned into a
    failed checkpoint, and so a failed session, when an atomic save recreated the file at the wrong moment)."""
    root = tmp_path / "w"
    root.mkdir()
    for name in ("out.txt.tmp", "b.tmp", "keep.txt"):
        (root / name).write_text(name)
    tracker = _scan(root)
    os.replace(root / "out.txt.tmp", root / "out.txt")  # saved: renamed away
    (root / "b.tmp").unlink()
    os.symlink(tmp_path / "nowhere", root / "b.tmp")
    store = ObjectStore(tmp_path / "objects")
    got = store_files(store, root, tracker.seen, tracker.modes)
    assert sorted(got.manifest) == ["keep.txt"] and got.left_out == []


def test_the_session_cap_leaves_new_files_out_once_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack review's case, scaled down (MAX_SESSION_BYTES 10,000): a 3,000-byte log grows by a line at each
    step, and each step's checkpoint stores it whole. The objects directory's total is counted from what it held when
    the runner started (an object of 1,000 bytes) plus each checkpoint's new objects: steps 0 and 1 fit (1,000 + 3,007
    + 3,014), step 2 does not (+ 3,021): log.bin is left out (``session_cap``), the checkpoint partial, and so is every
    later one, with one warning; a file whose object exists still costs nothing and is kept (same.txt), and no object
    of log.bin is stored past the cap."""
    monkeypatch.setattr(checkpoint_store, "MAX_SESSION_BYTES", 10_000)
    ctx, events = durable_ctx(tmp_path)
    objects = tmp_path / "s" / checkpoint.OBJECTS_DIR
    earlier = ObjectStore(objects).put_bytes(b"e" * 1000)  # a resumed session's objects
    (ctx.workdir / "log.bin").write_bytes(b"x" * 3000)
    for i in range(5):
        with ctx.step(f"append {i}"):
            with open(ctx.workdir / "log.bin", "ab") as f:
                f.write(b"line %d\n" % i)
            if i == 3:
                (ctx.workdir / "same.txt").write_bytes(b"e" * 1000)
    cps = [p for k, p, _ in events if k == "step.checkpoint"]
    assert [c.get("partial", False) for c in cps] == [False, False, True, True, True]
    assert [c["new_bytes"] for c in cps] == [3007, 3014, 0, 0, 0]
    assert cps[2]["left_out"] == [{"path": "log.bin", "size": 3021, "why": "session_cap"}]
    assert cps[3]["left_out"] == [{"path": "log.bin", "size": 3028, "why": "session_cap"}]
    assert cps[3]["files"] == 1  # same.txt: its object existed
    assert ObjectStore(objects).has(earlier)
    sizes = sorted(p.stat().st_size for p in objects.rglob("*") if p.is_file() and p.read_bytes()[:1] != b"{")
    assert sizes == [1000, 3007, 3014], sizes  # the manifests (JSON) aside
    warnings = [p["event"] for k, p, _ in events if k == "log" and p.get("logger") == "labd.runner.durable"]
    assert len(warnings) == 1 and "'append 2' left out log.bin (3,021 bytes)" in warnings[0], warnings
    assert "10,000 bytes" in warnings[0]


def test_a_session_budget_counts_the_objects_already_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionBudget sums the objects directory once (objects only, not temporary files), then keeps the total: a
    reservation that fits is taken, one that does not is refused whole, and what a copy did not use is given back."""
    monkeypatch.setattr(checkpoint_store, "MAX_SESSION_BYTES", 5000)
    store = ObjectStore(tmp_path / "objects")
    store.put_bytes(b"a" * 1500)
    store.put_bytes(b"b" * 500)
    (store.root / ".tmp-1-2-abcd").write_bytes(b"t" * 999)
    budget = SessionBudget(store.root)
    assert budget.used == 2000
    assert budget.take(2500) and budget.used == 4500
    assert not budget.take(501) and budget.used == 4500
    budget.give_back(2500)
    assert budget.take(3000) and budget.used == 5000
    assert SessionBudget(tmp_path / "none").used == 0


def test_a_scan_pairs_each_digest_with_the_size_of_what_it_hashed(tmp_path, monkeypatch) -> None:
    """A file replaced by an atomic save (a new file renamed over it) between the walk's `stat` and the hash: the
    scan records the size of the file it hashed, so the manifest never pairs one file's digest with another's size
    (the suite caught `s36 out.json`: digest of 13,000 bytes recorded as 13,078). Before, the walk's size was kept."""
    import hashlib

    from labd.runner.files import FileTracker
    from labd.runner.workfs import WorkDir

    work = tmp_path / "work"
    work.mkdir()
    (work / "out.json").write_bytes(b"a" * 100)
    original = WorkDir.sha256_stat

    def renamed_first(self, rel):  # the save lands after the walk saw the old file, before it is hashed
        (work / "out.json.tmp").write_bytes(b"b" * 130)
        os.replace(work / "out.json.tmp", work / "out.json")
        return original(self, rel)

    monkeypatch.setattr(WorkDir, "sha256_stat", renamed_first)
    events: list = []
    tracker = FileTracker(work, lambda kind, payload, node_id=None, parent=None: events.append((kind, payload)) or 0)
    tracker.scan("n1")
    size, _mtime, digest = tracker.seen["out.json"]
    assert (digest, size) == (hashlib.sha256(b"b" * 130).hexdigest(), 130)
    created = [p for k, p in events if k == "file.created"]
    assert [(p["sha256"], p["size"]) for p in created] == [(digest, 130)]
