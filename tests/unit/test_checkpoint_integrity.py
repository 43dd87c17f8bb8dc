"""Checkpoints that cannot be written whole, and checkpoint objects damaged since: a full disk fails the
checkpoint loudly instead of recording a manifest without the file; restore and result loading check each
object against the sha256 it is named by (labd.runner.checkpoint, labd.runner.durable, daemon/api/durable.py)."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

import labd.runner.objects as objects_module
from labd.daemon.api.base import ApiError
from labd.daemon.api.seed import build_seed
from labd.runner.checkpoint import OBJECTS_DIR, DamagedObject, ObjectStore, restore
from labd.runner.context import current_node
from labd.runner.durable import CheckpointFailed
from tests.unit.durable_support import durable_ctx as _ctx


def _of(events: list[tuple[str, Any, Any]], kind: str) -> list[Any]:
    return [p for k, p, _ in events if k == kind]


def _tmp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*")) if root.exists() else []


class _FullDisk(io.BufferedWriter):
    """A file that takes 1000 bytes, then raises ENOSPC."""

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > 1000:
            super().write(bytes(data)[:max(0, 1000 - self.tell())])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _full_disk_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    if "w" in mode and os.path.basename(str(file)).startswith(".tmp-"):
        return _FullDisk(io.FileIO(file, "w"))
    return open(file, mode, *args, **kwargs)


def test_an_object_write_that_hits_a_full_disk_raises_and_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    """ObjectStore.put_file and put_bytes raise the ENOSPC of a failed write, store no object, and remove
    their temporary file (a full disk is not made fuller by half-written objects)."""
    store = ObjectStore(tmp_path / "objects")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5000))
    monkeypatch.setattr(objects_module, "open", _full_disk_open, raising=False)
    with pytest.raises(OSError) as err:
        store.put_file(src, hashlib.sha256(src.read_bytes()).hexdigest())
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()

    def write_bytes(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(OSError):
        store.put_bytes(b"x" * 5000)
    assert _tmp_files(store.root) == []
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_a_checkpoint_that_cannot_store_a_file_fails_the_step_instead_of_recording_it_without(tmp_path,
                                                                                             monkeypatch) -> None:
    """ENOSPC while storing a file of the work directory: no step.checkpoint is recorded for the step (a resume
    would otherwise restore a directory without the file, deleting it), the step is recorded failed with the
    error (not left running), and CheckpointFailed ends the workflow, which `except Exception` cannot hide."""
    ctx, events = _ctx(tmp_path)
    with ctx.step("init") as node:
        (ctx.workdir / "small.txt").write_text("hello")
        node.result = "init"

    def full(self: ObjectStore, src: Path, expected: str) -> tuple[str, int]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / ".tmp-x"))

    monkeypatch.setattr(ObjectStore, "put_file", full)
    with pytest.raises(CheckpointFailed) as err:
        try:
            with ctx.step("produce") as node:
                (ctx.workdir / "precious.bin").write_bytes(os.urandom(3000))
                node.result = "produced"
        except Exception:  # noqa: BLE001 - what a workflow may do: it must not swallow a failed checkpoint
            pytest.fail("CheckpointFailed was caught as an Exception")
    assert "produce" in str(err.value) and "No space left" in str(err.value)
    assert [c["name"] for c in _of(events, "step.checkpoint")] == ["init"]
    produce = [p for p in _of(events, "step.finished") if p["name"] == "produce"]
    assert len(produce) == 1 and produce[0]["status"] == "failed"
    assert "checkpoint failed" in produce[0]["error"] and "precious.bin" in produce[0]["error"]
    assert (ctx.workdir / "precious.bin").exists()
    # the step was left: what the workflow does next (its clean-up, its error report) is not attributed to it
    assert current_node.get() is None and ctx.active_node is None


def test_a_result_that_cannot_be_stored_fails_the_checkpoint_and_the_next_one_still_resolves(tmp_path,
                                                                                           monkeypatch) -> None:
    """ENOSPC storing a large result fails the checkpoint as well (not a silent result_error); a checkpoint
    recorded after it is based on the last recorded manifest, so it resolves to the whole directory."""
    ctx, events = _ctx(tmp_path)
    real = ObjectStore.put_bytes
    calls = {"n": 0}

    def once_full(self: ObjectStore, data: bytes) -> str:
        calls["n"] += 1
        if calls["n"] == 2:  # the first step's manifest, then the second step's result
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(ObjectStore, "put_bytes", once_full)
    with ctx.step("a") as node:
        (ctx.workdir / "a.txt").write_text("a")
    with pytest.raises(CheckpointFailed), ctx.step("b") as node:
        (ctx.workdir / "b.txt").write_text("b")
        node.result = "r" * 20_000
    with ctx.step("c") as node:
        (ctx.workdir / "c.txt").write_text("c")
    cps = _of(events, "step.checkpoint")
    assert [c["name"] for c in cps] == ["a", "c"] and not any(c.get("result_error") for c in cps)
    seed = build_seed([{**c, "node_id": n} for k, c, n in events if k == "step.checkpoint"],
                 tmp_path / "s" / OBJECTS_DIR, mode="resume")
    assert sorted(seed["files"]) == ["a.txt", "b.txt", "c.txt"]


def test_a_file_gone_since_the_scan_is_still_left_out_of_the_checkpoint(tmp_path, monkeypatch) -> None:
    """Only a file that vanished between the scan and its copy (FileNotFoundError, the file really gone) is
    skipped: the checkpoint is recorded without it."""
    ctx, events = _ctx(tmp_path)
    real = ObjectStore.put_file

    def vanishing(self: ObjectStore, src: Path, expected: str) -> tuple[str, int]:
        if src.name == "tmp.txt":
            src.unlink()
        return real(self, src, expected)

    monkeypatch.setattr(ObjectStore, "put_file", vanishing)
    with ctx.step("a"):
        (ctx.workdir / "keep.txt").write_text("keep")
        (ctx.workdir / "tmp.txt").write_text("tmp")
    assert [c["files"] for c in _of(events, "step.checkpoint")] == [1]


def _stored(tmp_path: Path) -> tuple[Path, ObjectStore, dict[str, list[Any]]]:
    root = tmp_path / "work"
    root.mkdir()
    store = ObjectStore(tmp_path / "objects")
    manifest = {}
    for name, text in (("a.txt", "alpha\n" * 100), ("sub/b.txt", "beta\n" * 100)):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
        digest, _ = store.put_file(root / name, hashlib.sha256(text.encode()).hexdigest())
        manifest[name] = [digest, len(text), 0o644]
    return root, store, manifest


def _damage(store: ObjectStore, digest: str, data: bytes = b"GARBAGE\n") -> None:
    os.chmod(store.path(digest), 0o644)
    store.path(digest).write_bytes(data)


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_restore_refuses_a_damaged_or_missing_object_and_leaves_the_directory_as_it_was(tmp_path) -> None:
    """An object whose content no longer matches its sha256, or that is gone, is not put in place: restore
    raises DamagedObject naming the file, and the work directory is exactly as before (nothing removed,
    nothing written, no staging directory left)."""
    root, store, manifest = _stored(tmp_path)
    (root / "a.txt").write_text("changed")
    (root / "extra.txt").write_text("not in the manifest")
    before = _listing(root)
    _damage(store, manifest["a.txt"][0])
    with pytest.raises(DamagedObject) as err:
        restore(root, manifest, store)
    assert "a.txt" in str(err.value) and "sha256" in str(err.value)
    assert _listing(root) == before and sorted(os.listdir(root)) == ["a.txt", "extra.txt", "sub"]
    os.unlink(store.path(manifest["a.txt"][0]))
    with pytest.raises(DamagedObject, match="a.txt .*missing"):
        restore(root, manifest, store)
    assert _listing(root) == before and sorted(os.listdir(root)) == ["a.txt", "extra.txt", "sub"]


def test_restore_with_intact_objects_still_makes_the_directory_the_manifest(tmp_path) -> None:
    """With intact objects, restore removes extra files, writes back changed and missing ones with their
    mode, and keeps identical ones (no staging directory remains)."""
    root, store, manifest = _stored(tmp_path)
    (root / "a.txt").write_text("changed")
    os.unlink(root / "sub" / "b.txt")
    (root / "extra.txt").write_text("x")
    counts = restore(root, manifest, store)
    assert counts == {"removed": 1, "written": 2, "kept": 0}
    assert _listing(root) == {"a.txt": b"alpha\n" * 100, "sub/b.txt": b"beta\n" * 100}
    assert sorted(os.listdir(root)) == ["a.txt", "sub"]
    assert restore(root, manifest, store) == {"removed": 0, "written": 0, "kept": 2}


def _record(tmp_path: Path, result: Any) -> tuple[ObjectStore, dict[str, Any]]:
    store = ObjectStore(tmp_path / "s" / OBJECTS_DIR)
    digest = store.put_bytes(pickle.dumps(result))
    return store, {"mode": "resume", "steps": {"0": {"name": "a", "node": "n1", "result": digest}}}


@pytest.mark.parametrize("damage", ["corrupted", "deleted", "bad inline"])
def test_a_recorded_result_that_does_not_load_makes_its_step_run_again(tmp_path, damage: str) -> None:
    """A recorded step whose result object is damaged (not its sha256), gone, or whose inline pickle does not
    load is not skipped with a raw UnpicklingError/FileNotFoundError: the step runs again, with a warning."""
    store, seed = _record(tmp_path, {"blob": "x" * 20_000})
    digest = seed["steps"]["0"]["result"]
    if damage == "corrupted":
        _damage(store, digest, pickle.dumps({"blob": "y" * 20_000}))  # even a valid pickle: not what was stored
    elif damage == "deleted":
        os.unlink(store.path(digest))
    else:
        seed["steps"]["0"] = {"name": "a", "node": "n1", "result_inline": base64.b64encode(b"\x80\x05junk").decode()}
    ctx, events = _ctx(tmp_path, seed)
    ran = []
    with ctx.step("a") as node:
        ran.append("a")
        node.result = "fresh"
    assert ran == ["a"] and node.result == "fresh" and not node.reused
    warnings = [p["event"] for p in _of(events, "log") if p["level"] == "warning"]
    assert len(warnings) == 1 and "'a'" in warnings[0] and "runs again" in warnings[0]
    assert [c["name"] for c in _of(events, "step.checkpoint")] == ["a"]


def test_an_intact_recorded_result_is_still_reused(tmp_path) -> None:
    """The check does not get in the way: an intact result object is loaded and its step skipped."""
    _store, seed = _record(tmp_path, {"blob": "x" * 20_000})
    ctx, _events = _ctx(tmp_path, seed)
    with ctx.step("a") as node:
        node.result = "fresh"
    assert node.reused and node.result == {"blob": "x" * 20_000}


def _cps(tmp_path: Path) -> tuple[Path, ObjectStore, list[dict[str, Any]], str]:
    objects = tmp_path / "objects"
    store = ObjectStore(objects)
    file_digest = store.put_bytes(b"file content")
    manifest = store.put_json({"files": {"data.txt": [file_digest, 12, 0o644]}})
    result = store.put_bytes(pickle.dumps("r" * 20_000))
    cps = [{"path": "0", "name": "one", "node_id": "n1", "manifest": manifest, "result": result},
           {"path": "1", "name": "two", "node_id": "n2", "manifest": manifest,
            "result_inline": base64.b64encode(pickle.dumps(2)).decode()}]
    return objects, store, cps, file_digest


@pytest.mark.parametrize("damage", ["result deleted", "result corrupted", "file object deleted"])
def test_the_daemon_refuses_a_record_whose_objects_are_gone_or_damaged(tmp_path, damage: str) -> None:
    """Before a resume or branch, the daemon checks that every result object exists and matches its sha256
    and that every file object of the manifest exists; otherwise no_checkpoint, naming the step."""
    objects, store, cps, file_digest = _cps(tmp_path)
    assert set(build_seed(cps, objects, mode="resume")["steps"]) == {"0", "1"}
    if damage == "result deleted":
        os.unlink(store.path(cps[0]["result"]))
    elif damage == "result corrupted":
        _damage(store, cps[0]["result"])
    else:
        os.unlink(store.path(file_digest))
    with pytest.raises(ApiError) as err:
        build_seed(cps, objects, mode="resume")
    assert err.value.code == "no_checkpoint"
    if damage.startswith("result"):
        assert "'one' (n1)" in err.value.message and err.value.details["node"] == "n1"
        assert ("damaged" if "corrupted" in damage else "gone") in err.value.message
    else:
        assert "data.txt" in err.value.message and err.value.details["node"] == "n2"
    assert orjson.loads(orjson.dumps(err.value.details))  # a plain mapping for the client
