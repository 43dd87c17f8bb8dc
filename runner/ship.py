"""Shipping a remote session's work directory back to the daemon, as events on the runner's own channel.

A runner started by the Ray launcher works in a directory on its node, which the daemon cannot read. After
every checkpoint (a completed step) and when the workflow has ended (completed, failed or cancelled -- not
after a SIGKILL), the runner sends the regular files of its work directory that changed since it last shipped
them as ``file.shipped`` events (a file deleted since is shipped as ``deleted: true``): base64 chunks of at
most :data:`CHUNK` bytes with the file's size and sha256. They travel like every other event (spooled,
signed, acknowledged, re-sent), so a file is either delivered whole or the session's record says which chunks
are missing; the daemon writes them under its own copy of the work directory (:mod:`labd.daemon.shipped`),
where ``labd files`` and downloads look.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path

from labd.runner.files import sha256_file

__all__ = ["ship_files", "chunk_for", "CHUNK", "Shipper"]

CHUNK = 512 * 1024  # raw bytes per event (~683 KiB of base64): well under max_message, one event per message




def chunk_for(max_message: int | None) -> int:
    """Raw bytes per chunk so that one event (base64: 4/3, plus its envelope) fits the daemon's ``max_message``."""
    if not max_message:
        return CHUNK
    return max(1024, min(CHUNK, (max_message - 8192) * 3 // 4))


def ship_files(root: Path, emit: Callable[..., int], max_bytes: int, chunk: int = CHUNK) -> tuple[int, int]:
    """Emit ``file.shipped`` events for every regular file under ``root`` (symlinks are not followed), up to
    ``max_bytes`` in all; files beyond it are named in one ``log`` warning. Returns (files, bytes) shipped."""
    return Shipper(root, emit, max_bytes, chunk).ship()


class Shipper:
    """Ships a work directory incrementally: each :meth:`ship` sends only files that changed (size, mtime or
    content) since the previous one, and marks the ones deleted since; ``max_bytes`` bounds the whole session."""

    def __init__(self, root: Path, emit: Callable[..., int], max_bytes: int, chunk: int = CHUNK) -> None:
        self.root, self.emit, self.max_bytes, self.chunk = root, emit, max_bytes, chunk
        self.total = 0
        self._sent: dict[str, tuple[int, int, str]] = {}  # rel -> (size, mtime_ns, sha256) as last shipped

    def ship(self) -> tuple[int, int]:
        """Ship what changed since the last call; returns (files, bytes) shipped by this call."""
        shipped = nbytes = 0
        skipped: list[str] = []
        present: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = path.relative_to(self.root).as_posix()
                present.add(rel)
                before = self._sent.get(rel)
                if before is not None and before[:2] == (st.st_size, st.st_mtime_ns):
                    continue  # unchanged since shipped: not even read
                if self.total + st.st_size > self.max_bytes:
                    skipped.append(rel)
                    continue
                try:
                    digest = sha256_file(path)
                    if before is not None and before[2] == digest:  # touched, same bytes
                        self._sent[rel] = (st.st_size, st.st_mtime_ns, digest)
                        continue
                    self._send(path, rel, st.st_size, digest)
                except OSError as exc:  # vanished or unreadable meanwhile: say so, ship the rest
                    self.emit("log", {"level": "warning", "event": f"file not shipped: {rel}: {exc}",
                                      "logger": "labd.runner.ship"})
                    continue
                self._sent[rel] = (st.st_size, st.st_mtime_ns, digest)
                shipped += 1
                nbytes += st.st_size
                self.total += st.st_size
        for rel in sorted(set(self._sent) - present):  # deleted since shipped: the daemon's copy follows
            del self._sent[rel]
            self.emit("file.shipped", {"path": rel, "size": 0, "sha256": "", "offset": 0, "last": True,
                                       "deleted": True})
        if skipped:
            self.emit("log", {"level": "warning", "logger": "labd.runner.ship",
                              "event": f"{len(skipped)} files not shipped back (over the {self.max_bytes}-byte "
                                       "limit): " + ", ".join(skipped[:20])})
        return shipped, nbytes

    def _send(self, path: Path, rel: str, size: int, digest: str) -> None:
        with open(path, "rb") as f:
            offset = 0
            while True:
                data = f.read(self.chunk)
                last = offset + len(data) >= size or not data
                self.emit("file.shipped", {"path": rel, "size": size, "sha256": digest, "offset": offset,
                                           "data": base64.b64encode(data).decode(), "last": last})
                offset += len(data)
                if last:
                    break
