"""Reading a range of a checkpoint object from a session's object store at home, for a shipped file that comes
without its bytes (``file.shipped`` with ``from_object``: :mod:`labd.daemon.shipped`, :mod:`labd.runner.ship`).

The store (``<sessions>/<id>/checkpoints/objects``) holds what the session's runner shipped, and a local session's
runner can write its own session directory: every file and directory is opened through
:class:`~labd.runner.workfs.WorkDir` (no symlink followed in any component, regular files only, never blocking on
a FIFO), so a range never reads beyond the session's own store. A file of 4 MiB or more is stored as 1 MiB chunks and
an index (:mod:`labd.runner.objects`); an index is checked for exactly that form (:func:`index_ok`) when it arrives
and again when a range is read through it, and at most :data:`MAX_INDEX_BYTES` of it are read. The ranges of one
file come one after another, so the last index read is kept (one parse a file, not one a range).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import orjson

from labd.runner.checkpoint import OBJECTS_DIR
from labd.runner.objects import CHUNK_BYTES
from labd.runner.workfs import WorkDir

__all__ = ["MAX_INDEX_BYTES", "MAX_RANGE", "index_ok", "object_range"]

#: the most bytes one ``from_object`` chunk may name: what the runner names (runner/ship.py FROM_OBJECT_RANGE)
MAX_RANGE = 4 << 20
#: the largest chunk index read (that of a ~250 GB file); a larger one is refused as damaged
MAX_INDEX_BYTES = 16 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")

_last_lock = threading.Lock()
_last: tuple[Path, str, int, list[str]] | None = None  # (session, digest, size, chunk digests): the last index read


def index_ok(index: Any, size: int | None = None) -> bool:
    """Is ``index`` a chunk index as :mod:`labd.runner.objects` writes one: ``{"size", "chunk": 1 MiB, "chunks": [one
    digest per MiB of size]}`` (and, with ``size``, of that size)?"""
    if not isinstance(index, dict):
        return False
    n, chunk, chunks = index.get("size"), index.get("chunk"), index.get("chunks")
    if type(n) is not int or n < 0 or (size is not None and n != size) or chunk != CHUNK_BYTES:
        return False
    return (isinstance(chunks, list) and len(chunks) == -(-n // CHUNK_BYTES)
            and all(isinstance(c, str) and _DIGEST.fullmatch(c) for c in chunks))


def object_range(session: Path, digest: str, size: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of object ``digest``, whose content is ``size`` bytes, from ``session``'s
    object store at home (stored whole or as chunks). Raises OSError (FileNotFoundError: not there) or ValueError
    (not a digest, another size, a range past its end or over :data:`MAX_RANGE`, a damaged index): the caller keeps
    nothing of the file then."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"not an object digest: {digest[:80]!r}")
    if not (0 <= length <= MAX_RANGE and offset >= 0 and offset + length <= size):
        raise ValueError(f"a range of {length} bytes at {offset} of a {size}-byte file (at most {MAX_RANGE} bytes)")
    try:
        root = WorkDir(session)
    except FileNotFoundError:
        raise FileNotFoundError(f"object {digest[:12]}... is not in the session's object store at home") from None
    with root:
        try:
            fd = root.open_file(f"{OBJECTS_DIR}/{digest[:2]}/{digest}")
        except FileNotFoundError:
            data = _chunked(root, session, digest, size, offset, length)
        else:
            try:
                if os.fstat(fd).st_size != size:
                    raise ValueError(f"object {digest[:12]}... is not {size} bytes")
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
    if len(data) != length:
        raise ValueError(f"object {digest[:12]}... holds {len(data)} of the {length} bytes at {offset}")
    return data


def _chunked(root: WorkDir, session: Path, digest: str, size: int, offset: int, length: int) -> bytes:
    """:func:`object_range` of an object stored as chunks."""
    names = _chunks(root, session, digest, size)
    parts, at = [], offset
    while at < offset + length:
        name = names[at // CHUNK_BYTES]
        fd = root.open_file(f"{OBJECTS_DIR}/{name[:2]}/{name}")
        try:
            piece = os.pread(fd, min(offset + length - at, CHUNK_BYTES - at % CHUNK_BYTES), at % CHUNK_BYTES)
        finally:
            os.close(fd)
        if not piece:
            break
        parts.append(piece)
        at += len(piece)
    return b"".join(parts)


def _chunks(root: WorkDir, session: Path, digest: str, size: int) -> list[str]:
    """The chunk digests of object ``digest`` from its index (the last one read is kept)."""
    global _last
    with _last_lock:
        last = _last
    if last is not None and last[:3] == (session, digest, size):  # the size too: the names are checked against it
        return last[3]
    try:
        fd = root.open_file(f"{OBJECTS_DIR}/{digest[:2]}/{digest}.chunks")
    except FileNotFoundError:
        raise FileNotFoundError(f"object {digest[:12]}... is not in the session's object store at home") from None
    try:
        if os.fstat(fd).st_size > MAX_INDEX_BYTES:
            raise ValueError(f"the chunk index of object {digest[:12]}... is over {MAX_INDEX_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        index = orjson.loads(raw)
    except orjson.JSONDecodeError:
        index = None
    if not index_ok(index, size):
        raise ValueError(f"the chunk index of object {digest[:12]}... is damaged or not of a {size}-byte file")
    names = [str(c) for c in index["chunks"]]
    with _last_lock:
        _last = (session, digest, size, names)
    return names
