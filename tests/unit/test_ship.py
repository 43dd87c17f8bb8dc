"""Shipping a remote runner's work directory from its checkpoints (labd.runner.ship) and the one walk rule that
decides what the file tracker follows, a checkpoint holds and a remote runner ships (labd.runner.files.walk_files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from labd.runner.checkpoint import Snapshot
from labd.runner.durable import Durable
from labd.runner.files import FileTracker, walk_files
from labd.runner.ship import Shipper


def _tree(work: Path) -> None:
    (work / "a" / "b").mkdir(parents=True)
    (work / "top.txt").write_text("top")
    (work / "a" / "b" / "deep.csv").write_text("1,2\n")
    (work / ".git").mkdir()
    (work / ".git" / "HEAD").write_text("ref")
    (work / "a" / "__pycache__").mkdir()
    (work / "a" / "__pycache__" / "m.pyc").write_bytes(b"\0")
    (work / "link").symlink_to(work / "top.txt")
    os.mkfifo(work / "fifo")


def _durable(tmp: Path) -> tuple[Durable, FileTracker, list[tuple[str, Any]]]:
    events: list[tuple[str, Any]] = []

    def emit(kind: str, payload: Any, node: Any = None, parent: Any = None) -> int:
        events.append((kind, payload))
        return len(events)

    work = tmp / "s" / "work"
    work.mkdir(parents=True, exist_ok=True)
    files = FileTracker(work, emit)
    return Durable(emit, tmp / "s", work, files), files, events


def test_one_walk_rule_for_tracking_checkpoints_and_shipping(tmp_path: Path) -> None:
    """walk_files yields the regular files only, skipping dot directories, __pycache__, symlinks and FIFOs, in a
    stable order; the tracker reports exactly those, a checkpoint's snapshot holds exactly those, and so the
    shipper (which ships snapshots) ships exactly those."""
    durable, files, events = _durable(tmp_path)
    _tree(durable.workdir)
    walked = [rel for rel, _ in walk_files(durable.workdir)]
    assert walked == ["top.txt", "a/b/deep.csv"]
    files.scan(None)
    assert sorted(p["path"] for k, p in events if k == "file.created") == sorted(walked)
    snap = durable.snapshot()
    assert sorted(snap.files) == sorted(walked)
    sent: list[dict[str, Any]] = []
    Shipper(durable.workdir, lambda kind, payload: sent.append(payload) or 0, 1 << 30).ship(snap)
    assert sorted(str(e["path"]) for e in sent) == sorted(walked)


def test_shipping_reads_the_checkpoint_not_the_work_directory(tmp_path: Path) -> None:
    """The shipper sends the bytes the checkpoint recorded, from the object store: a file rewritten in the work
    directory after the checkpoint (a concurrent step) is shipped as checkpointed, with a matching sha256; the
    work directory is not walked again (a file created after the checkpoint is not shipped until a later one)."""
    import base64
    import hashlib

    durable, files, _ = _durable(tmp_path)
    shipped: list[Snapshot] = []
    durable.after_checkpoint = shipped.append
    (durable.workdir / "r.txt").write_text("checkpointed")
    files.scan(None)
    durable.checkpoint("n1", "0", "step", None)
    (durable.workdir / "r.txt").write_text("rewritten later")
    (durable.workdir / "late.txt").write_text("after the checkpoint")
    sent: list[dict[str, Any]] = []
    assert Shipper(durable.workdir, lambda kind, payload: sent.append(payload) or 0, 1 << 30).ship(shipped[0]) \
        == (1, len("checkpointed"))
    (event,) = sent
    data = base64.b64decode(str(event["data"]))
    assert data == b"checkpointed" and event["sha256"] == hashlib.sha256(data).hexdigest()


def test_incremental_shipping_skips_unchanged_and_marks_deleted(tmp_path: Path) -> None:
    """Successive snapshots ship only files whose content changed (a touched file with the same bytes is not sent
    again), a file gone from the snapshot is shipped as deleted once, and ``max_bytes`` bounds the whole session
    with one warning naming what was left behind."""
    durable, files, _ = _durable(tmp_path)
    work = durable.workdir
    (work / "keep.txt").write_text("same")
    (work / "gone.txt").write_text("soon deleted")
    sent: list[tuple[str, dict[str, Any]]] = []
    shipper = Shipper(work, lambda kind, payload: sent.append((kind, payload)) or 0, 40)
    files.scan(None)
    assert shipper.ship(durable.snapshot()) == (2, len("same") + len("soon deleted"))
    sent.clear()
    (work / "gone.txt").unlink()
    os.utime(work / "keep.txt", ns=(1, 1))
    (work / "new.txt").write_text("step two")
    (work / "huge.bin").write_bytes(b"x" * 100)
    files.scan(None)
    assert shipper.ship(durable.snapshot()) == (1, len("step two"))
    assert [(k, p["path"], p.get("deleted", False)) for k, p in sent if k == "file.shipped"] == \
        [("file.shipped", "gone.txt", True), ("file.shipped", "new.txt", False)]  # deletions first: room at home
    (warning,) = [p for k, p in sent if k == "log"]
    assert "huge.bin" in warning["event"]
    sent.clear()
    assert shipper.ship(durable.snapshot()) == (0, 0) and not [k for k, _ in sent if k == "file.shipped"]


def test_the_daemon_keeps_a_shipped_non_utf8_name_by_its_bytes(tmp_path: Path) -> None:
    """A remote runner ships ``bad\\xff.txt`` (bytes) with its display path and ``path_b64``: the daemon's copy of
    the work directory gets the file under its exact name (before: under the display form, a file really named with
    a backslash, which is another file); a ``path_b64`` that is not base64 is refused and nothing is written."""
    import base64
    import hashlib

    from labd.daemon.shipped import receive

    raw, data = b"bad\xff.txt", b"shipped bytes"
    chunk = {"path": "bad\\xff.txt", "path_b64": base64.b64encode(raw).decode(), "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "offset": 0, "data": base64.b64encode(data).decode(),
             "last": True}
    stored = receive(tmp_path, "s1", chunk)
    work = tmp_path / "s1" / "work"
    assert "error" not in stored and "data" not in stored, stored
    assert os.listdir(os.fsencode(work)) == [raw]
    assert Path(os.fsdecode(os.path.join(os.fsencode(work), raw))).read_bytes() == data
    refused = receive(tmp_path, "s2", {**chunk, "path_b64": "not base64!"})
    assert "path_b64" in refused["error"] and not (tmp_path / "s2").exists()


def test_a_shipped_file_keeps_its_mode_at_home_and_a_chmod_alone_ships_it_again(tmp_path: Path) -> None:
    """A script made executable on the node (0755) and a private file (0640) arrive in the daemon's copy with those
    modes (they arrived 0600: a shipped script could not be run from home); set-id bits never travel. A ``chmod``
    that leaves the content as it was ships the file again (with its new mode), and an unchanged file is not
    shipped. A chunk whose ``mode`` is not a mode leaves the copy 0600."""
    import base64
    import hashlib

    from labd.daemon.shipped import receive

    durable, files, _ = _durable(tmp_path)
    work = durable.workdir
    (work / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (work / "run.sh").chmod(0o4755)
    (work / "notes.txt").write_text("private")
    (work / "notes.txt").chmod(0o640)
    sent: list[dict[str, Any]] = []
    shipper = Shipper(work, lambda kind, payload: sent.append(payload) or 0, 1 << 30)
    files.scan(None)
    home = tmp_path / "home"
    (home / "s1").mkdir(parents=True)

    def ship() -> list[str]:
        sent.clear()
        shipper.ship(durable.snapshot())
        for chunk in sent:
            got = receive(home, "s1", chunk)
            assert "error" not in got, got["error"]
        return sorted(str(c["path"]) for c in sent)

    assert ship() == ["notes.txt", "run.sh"]
    copy = home / "s1" / "work"
    assert (copy / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (copy / "notes.txt").stat().st_mode & 0o7777 == 0o640
    (work / "notes.txt").chmod(0o600)
    files.scan(None)
    assert ship() == ["notes.txt"]
    assert (copy / "notes.txt").stat().st_mode & 0o7777 == 0o600
    assert ship() == []
    data = b"x"
    odd = {"path": "odd.txt", "size": 1, "sha256": hashlib.sha256(data).hexdigest(), "offset": 0, "last": True,
           "data": base64.b64encode(data).decode(), "mode": 0o100755}
    assert "error" not in receive(home, "s1", odd)
    assert (copy / "odd.txt").stat().st_mode & 0o7777 == 0o600
