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
