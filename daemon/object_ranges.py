"""Reading a range of a checkpoint object from a session's object store at home, for a shipped file that comes
without its bytes (``file.shipped`` with ``from_object``: :mod:`labd.daemon.shipped`, :mod:`labd.runner.ship`).

The store (``<sessions>/<id>/checkpoints/objects``) holds what the session's runner shipped, and a local session's
runner can write its own session directory: every file and directory is opened through
:class:`~labd.runner.workfs.WorkDir` (no symlink followed in any component, regular files only, never blocking on
a FIFO), so a range never reads beyond the session's own store. A file of 4 MiB or more is stored as 1 MiB chunks and
an index (:mod:`labd.runner.objects`); an index is checked for exactly that form when it arrives (:func:`index_ok`:
its bytes must be exactly what the runner's encoder makes of it, at most
:data:`MAX_INDEX_BYTES`). So a range reads only the few entries it needs, at their computed offsets
(:func:`_chunk_names`), and never parses an index: a 16 MiB index parsed for every 250-byte event cost ingest 0.2 s
each. An entry that is not a quoted digest there (an index a local session's runner rewrote in its own store) is
refused; the file's sha256 is checked whole in any case.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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

_ENTRY = 67  # '"' + 64 hex digits + '",': one chunk's entry in an index as orjson writes it


def index_ok(raw: bytes) -> bool:
    """Are ``raw`` the bytes of a chunk index exactly as :mod:`labd.runner.objects` writes one (orjson, compact):
    ``{"size":N,"chunk":1048576,"chunks":[one digest per MiB of N]}``, at most :data:`MAX_INDEX_BYTES`?"""
    if len(raw) > MAX_INDEX_BYTES:
        return False
    try:
        index = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(index, dict):
        return False
    n, chunk, chunks = index.get("size"), index.get("chunk"), index.get("chunks")
    if type(n) is not int or n < 0 or chunk != CHUNK_BYTES or not isinstance(chunks, list):
        return False
    if len(chunks) != -(-n // CHUNK_BYTES) or not all(isinstance(c, str) and _DIGEST.fullmatch(c) for c in chunks):
        return False
    return raw == orjson.dumps({"size": n, "chunk": CHUNK_BYTES, "chunks": chunks})  # entries at known offsets


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
            data = _chunked(root, digest, size, offset, length)
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


def _chunked(root: WorkDir, digest: str, size: int, offset: int, length: int) -> bytes:
    """:func:`object_range` of an object stored as chunks: the chunk digests it needs, read from the index's entries."""
    if not length:
        return b""
    first, last = offset // CHUNK_BYTES, max(offset, offset + length - 1) // CHUNK_BYTES
    names = _chunk_names(root, digest, size, first, last)
    parts, at = [], offset
    while at < offset + length:
        name = names[at // CHUNK_BYTES - first]
        try:
            fd = root.open_file(f"{OBJECTS_DIR}/{name[:2]}/{name}")
        except FileNotFoundError:
            raise FileNotFoundError(f"chunk {name[:12]}... of object {digest[:12]}... is not in the session's object "
                                    "store at home") from None
        try:
            piece = os.pread(fd, min(offset + length - at, CHUNK_BYTES - at % CHUNK_BYTES), at % CHUNK_BYTES)
        finally:
            os.close(fd)
        if not piece:
            break
        parts.append(piece)
        at += len(piece)
    return b"".join(parts)


def _chunk_names(root: WorkDir, digest: str, size: int, first: int, last: int) -> list[str]:
    """The digests of chunks ``first`` .. ``last`` of object ``digest`` (``size`` bytes), read from its index at the
    offsets :func:`index_ok` guarantees (ValueError if they are not there: not an index of that size)."""
    try:
        fd = root.open_file(f"{OBJECTS_DIR}/{digest[:2]}/{digest}.chunks")
    except FileNotFoundError:
        raise FileNotFoundError(f"object {digest[:12]}... is not in the session's object store at home") from None
    try:
        head = b'{"size":%d,"chunk":%d,"chunks":[' % (size, CHUNK_BYTES)
        count = -(-size // CHUNK_BYTES)
        tail = b"]}"
        if os.fstat(fd).st_size != len(head) + max(0, count * _ENTRY - 1) + len(tail) or \
                os.pread(fd, len(head), 0) != head:
            raise ValueError(f"the chunk index of object {digest[:12]}... is damaged or not of a {size}-byte file")
        raw = os.pread(fd, (last - first + 1) * _ENTRY, len(head) + first * _ENTRY)
    finally:
        os.close(fd)
    names = []
    for i in range(last - first + 1):
        entry = raw[i * _ENTRY:i * _ENTRY + 66]
        name = entry[1:65].decode("ascii", "replace")
        if entry[:1] != b'"' or entry[65:66] != b'"' or not _DIGEST.fullmatch(name):
            raise ValueError(f"the chunk index of object {digest[:12]}... is damaged")
        names.append(name)
    return names
