"""Receiving shipped files (daemon/shipped.py, what ingest does with a remote runner's ``file.shipped`` events),
on a real directory without Ray: chunks assemble into the file only when the last one matches the sha256; a path
that would leave the session's work directory, or go through a symlink out of it, is refused."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from labd.daemon.shipped import receive


def _chunks(rel: str, data: bytes, size: int) -> list[dict[str, object]]:
    digest = hashlib.sha256(data).hexdigest()
    out = []
    for off in range(0, max(len(data), 1), size):
        part = data[off:off + size]
        out.append({"path": rel, "size": len(data), "sha256": digest, "offset": off,
                    "data": base64.b64encode(part).decode(), "last": off + size >= len(data)})
    return out


def test_chunks_assemble_atomically_and_bytes_are_not_stored(tmp_path: Path) -> None:
    """Three chunks become the file (byte for byte) only when the last arrives; before that nothing is at the
    path; the payloads returned for storage carry no ``data``. A wrong sha256 leaves no file and says so."""
    data = os.urandom(2500)
    work = tmp_path / "s1" / "work"
    stored = []
    for i, ev in enumerate(_chunks("deep/dir/f.bin", data, 1000)):
        stored.append(receive(tmp_path, "s1", ev))
        if i < 2:
            assert not (work / "deep" / "dir" / "f.bin").exists()
    assert (work / "deep" / "dir" / "f.bin").read_bytes() == data
    assert all("data" not in p and "error" not in p for p in stored) and sum(p["bytes"] for p in stored) == 2500
    bad = _chunks("g.bin", b"abc", 10)[0] | {"sha256": "0" * 64}
    assert "sha256 mismatch" in receive(tmp_path, "s1", bad)["error"]
    assert not (work / "g.bin").exists()


def test_paths_out_of_the_work_directory_are_refused(tmp_path: Path) -> None:
    """``..``, absolute paths and a symlinked directory leading out of the work directory are refused; nothing is
    written outside it."""
    work = tmp_path / "s2" / "work"
    work.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (work / "link").symlink_to(outside)
    for rel in ("../escape.txt", "/tmp/abs.txt", "a/../../escape.txt", "link/x.txt"):
        got = receive(tmp_path, "s2", _chunks(rel, b"x", 10)[0])
        assert got.get("error", "").startswith("refused"), (rel, got)
    assert not list(outside.iterdir()) and not (tmp_path / "s2" / "escape.txt").exists()


def test_ship_then_receive_round_trip_within_small_max_message(tmp_path: Path) -> None:
    """What a remote runner ships (runner/ship.py: a checkpoint's snapshot, chunked for a 64 KiB ``max_message``)
    is received as the same tree of files; every event fits the message limit; symlinks are not shipped."""
    import orjson

    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper, chunk_for

    src = tmp_path / "node" / "work"
    (src / "a" / "b").mkdir(parents=True)
    files = {"top.txt": b"hello\n", "a/b/big.bin": os.urandom(300_000), "a/empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    (src / "a" / "ln").symlink_to("/etc/passwd")
    tracker = FileTracker(src, lambda *a, **k: 0)
    tracker.scan(None)
    snapshot = Durable(lambda *a, **k: 0, src.parent, src, tracker).snapshot()
    events: list[dict[str, object]] = []
    shipper = Shipper(src, lambda kind, payload: events.append(payload) or 0, 1 << 30, chunk_for(64 * 1024))
    n, total = shipper.ship(snapshot)
    assert (n, total) == (3, sum(len(d) for d in files.values()))
    assert all(len(orjson.dumps(e)) < 64 * 1024 for e in events)
    for e in events:
        assert "error" not in receive(tmp_path, "s3", e)
    work = tmp_path / "s3" / "work"
    assert {p.relative_to(work).as_posix(): p.read_bytes() for p in work.rglob("*") if p.is_file()} == files


def test_incremental_shipping_sends_only_changes_and_deletions(tmp_path: Path) -> None:
    """After each checkpoint a remote runner ships only what changed since its last shipment (an untouched
    file is not sent again), and a file deleted on the node is deleted from the daemon's copy too."""
    from labd.runner.durable import Durable
    from labd.runner.files import FileTracker
    from labd.runner.ship import Shipper

    src = tmp_path / "node" / "work"
    src.mkdir(parents=True)
    (src / "keep.txt").write_text("same")
    (src / "gone.txt").write_text("soon deleted")
    tracker = FileTracker(src, lambda *a, **k: 0)
    durable = Durable(lambda *a, **k: 0, src.parent, src, tracker)
    sent: list[dict[str, object]] = []
    shipper = Shipper(src, lambda kind, payload: sent.append(payload) or 0, 1 << 30)

    def ship() -> tuple[int, int]:
        tracker.scan(None)
        return shipper.ship(durable.snapshot())

    def deliver() -> list[str]:
        batch, sent[:] = list(sent), []
        for e in batch:
            assert "error" not in receive(tmp_path, "s4", e)
        return sorted(str(e["path"]) + (" (deleted)" if e.get("deleted") else "") for e in batch)

    assert ship() == (2, len("same") + len("soon deleted"))
    assert deliver() == ["gone.txt", "keep.txt"]
    (src / "gone.txt").unlink()
    (src / "new.txt").write_text("step two")
    os.utime(src / "keep.txt")  # touched, same bytes: not sent again
    assert ship() == (1, len("step two"))
    assert deliver() == ["gone.txt (deleted)", "new.txt"]
    work = tmp_path / "s4" / "work"
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt", "new.txt"]
    assert ship() == (0, 0) and deliver() == []
