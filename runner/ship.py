"""Shipping a remote session's work directory back to the daemon, as events on the runner's own channel.

A runner started by the Ray launcher works in a directory on its node, which the daemon cannot read. When
the workflow has ended (completed, failed or cancelled -- not after a SIGKILL), the runner sends every regular
file of its work directory as ``file.shipped`` events: base64 chunks of at most :data:`CHUNK` bytes with the
file's size and sha256. They travel like every other event (spooled, signed, acknowledged, re-sent), so a file
is either delivered whole or the session's record says which chunks are missing; the daemon writes them under
its own copy of the work directory (:mod:`labd.daemon.shipped`), where ``labd files`` and downloads look.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["ship_files", "chunk_for", "CHUNK"]

CHUNK = 512 * 1024  # raw bytes per event (~683 KiB of base64): well under max_message, one event per message


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chunk_for(max_message: int | None) -> int:
    """Raw bytes per chunk so that one event (base64: 4/3, plus its envelope) fits the daemon's ``max_message``."""
    if not max_message:
        return CHUNK
    return max(1024, min(CHUNK, (max_message - 8192) * 3 // 4))


def ship_files(root: Path, emit: Callable[..., int], max_bytes: int, chunk: int = CHUNK) -> tuple[int, int]:
    """Emit ``file.shipped`` events for every regular file under ``root`` (symlinks are not followed), up to
    ``max_bytes`` in all; files beyond it are named in one ``log`` warning. Returns (files, bytes) shipped."""
    shipped = total = 0
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = path.relative_to(root).as_posix()
            if total + st.st_size > max_bytes:
                skipped.append(rel)
                continue
            try:
                digest = _sha256(path)
                with open(path, "rb") as f:
                    offset = 0
                    while True:
                        data = f.read(chunk)
                        last = offset + len(data) >= st.st_size or not data
                        emit("file.shipped", {"path": rel, "size": st.st_size, "sha256": digest, "offset": offset,
                                              "data": base64.b64encode(data).decode(), "last": last})
                        offset += len(data)
                        if last:
                            break
            except OSError as exc:  # vanished or unreadable meanwhile: say so, ship the rest
                emit("log", {"level": "warning", "event": f"file not shipped: {rel}: {exc}",
                             "logger": "labd.runner.ship"})
                continue
            shipped += 1
            total += st.st_size
    if skipped:
        emit("log", {"level": "warning", "logger": "labd.runner.ship",
                     "event": f"{len(skipped)} files not shipped back (over the {max_bytes}-byte limit): "
                              + ", ".join(skipped[:20])})
    return shipped, total
