"""Receiving the files a remote runner ships back (``file.shipped`` events, see :mod:`labd.runner.ship`), and its
checkpoints' objects (``checkpoint.object``: :func:`receive_object`).

Ingest calls :func:`receive` for each such event before it is stored: the chunk is written into the daemon's
copy of the session's work directory (``<sessions>/<id>/work``, where ``labd files`` and downloads read) and
the stored event keeps everything but the bytes. A file is assembled in ``<path>.labd-part`` and renamed into
place only when its last chunk arrived and its sha256 matches, so a reader never sees half a file. Paths are
relative and confined to the work directory (no ``..``, no absolute path, nothing written through a symlink):
a runner writes only into its own session's directory.

A chunk of a file whose content the runner shipped as checkpoint objects comes without its bytes
(``from_object: true``, a range ``offset``/``length`` of at most :data:`MAX_RANGE` bytes): it is copied from the
session's object store at home, which ingest filled from the runner's earlier ``checkpoint.object`` events; the file
is still kept only if the whole holds its sha256 (:mod:`labd.runner.ship`, "A file's bytes travel once").
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import orjson

from labd.ipc.safe_files import open_regular
from labd.runner.checkpoint import OBJECTS_DIR
from labd.runner.names import path_of_event
from labd.runner.objects import CHUNK_BYTES, ObjectStore, read_json_object
from labd.runner.workfs import WorkDir

__all__ = ["receive", "receive_object"]

#: an object's name in a session's object store: ``ab/<sha256>`` (stored whole) or ``ab/<sha256>.chunks`` (the
#: index of a file stored in chunks), ``ab`` the digest's first two digits
_OBJECT = re.compile(r"([0-9a-f]{2})/(([0-9a-f]{64})(\.chunks)?)")

PART = ".labd-part"
#: the most bytes one ``from_object`` chunk may name (the runner names 4 MiB: runner/ship.py FROM_OBJECT_RANGE)
MAX_RANGE = 8 << 20


def _target(sessions_dir: Path, sid: str, rel: str) -> Path | None:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or "\x00" in rel:
        return None
    work = sessions_dir / sid / "work"
    target = work.joinpath(*p.parts)
    try:  # no component may be a symlink leading out
        if not target.parent.resolve().is_relative_to(work.resolve()):
            return None
    except OSError:
        return None
    return target


def receive(sessions_dir: Path | None, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write the chunk in ``payload`` (best effort: a failure is noted in the returned payload as ``error``);
    return the payload to store, without ``data``."""
    stored = {k: v for k, v in payload.items() if k != "data"}
    if sessions_dir is None:
        return stored
    try:  # a name that is not UTF-8 by its exact bytes (path_b64), as the session's own work directory has it
        rel = path_of_event(payload)
    except (binascii.Error, ValueError):
        return {**stored, "error": "refused: path_b64 is not base64"}
    target = _target(sessions_dir, sid, rel)
    if target is None:
        return {**stored, "error": "refused: the path leaves the work directory"}
    if payload.get("deleted"):  # deleted on the node since it was shipped: so in the daemon's copy
        try:
            if target.is_file() and not target.is_symlink():
                target.unlink()
        except OSError as exc:
            return {**stored, "error": f"not deleted: {exc}"[:300]}
        return stored
    try:
        if payload.get("from_object"):
            data = _object_range(sessions_dir / sid, str(payload["sha256"]), int(payload["offset"]),
                                 int(payload.get("length", -1)))
        else:
            data = base64.b64decode(str(payload.get("data") or ""), validate=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + PART)
        stored["bytes"] = _write_chunk(str(part), data, int(payload["offset"]))
        if payload.get("last"):
            with _read(str(part)) as f:
                kept = _sha256(f) == payload["sha256"]
            if not kept:
                return {**stored, "error": "sha256 mismatch: a chunk is missing; the file was not kept"}
            os.replace(part, target)
    except (OSError, ValueError, binascii.Error) as exc:
        return {**stored, "error": f"not written: {exc}"[:300]}
    return stored


def receive_object(sessions_dir: Path | None, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write the chunk of a checkpoint object in ``payload`` into the session's object store at home
    (``<sessions>/<id>/checkpoints/objects``), where a resume or a branch of the session is made, as
    :func:`receive` does a file: assembled in ``<name>.labd-part``, renamed into place (read-only) once the last
    chunk came and the object holds its digest (an index of chunks: a JSON object). An object already there is
    kept (objects never change). Every directory on the way is opened without following a symlink, from the session's
    own (a symlink a runner put there is replaced by a real directory: nothing is written beyond it). Best effort: a
    failure is noted in the returned payload as ``error``; the stored payload has no ``data``."""
    stored = {k: v for k, v in payload.items() if k != "data"}
    if sessions_dir is None:
        return stored
    name = str(payload.get("name"))
    m = _OBJECT.fullmatch(name)
    if m is None or m.group(1) != m.group(3)[:2]:
        return {**stored, "error": "refused: not an object name"}
    obj, part = m.group(2), m.group(2) + PART
    try:
        data = base64.b64decode(str(payload.get("data") or ""), validate=True)
        fd = _object_dir(sessions_dir / sid, m.group(1))
        try:
            try:
                os.stat(obj, dir_fd=fd, follow_symlinks=False)
                return stored  # there already: objects never change
            except FileNotFoundError:
                pass
            stored["bytes"] = _write_chunk(part, data, int(payload["offset"]), fd)
            if payload.get("last"):
                if not _holds(fd, part, m.group(3), bool(m.group(4))):
                    os.unlink(part, dir_fd=fd)
                    return {**stored, "error": "damaged: the object does not hold its digest; it was not kept"}
                os.replace(part, obj, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)
    except (OSError, ValueError, binascii.Error) as exc:
        return {**stored, "error": f"not written: {exc}"[:300]}
    return stored


def _object_range(session: Path, digest: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of the content of object ``digest`` in ``session``'s object store at home (stored
    whole, or as chunks: the index says which). OSError (or ValueError) when it is not there, not an object name, or
    shorter than that: the chunk is then not written, and the file not kept."""
    if not 0 <= length <= MAX_RANGE or offset < 0:
        raise ValueError(f"a range of {length} bytes at {offset} (at most {MAX_RANGE})")
    store = ObjectStore(session / OBJECTS_DIR)
    try:
        with open_regular(store.path(digest)) as f:
            data = os.pread(f.fileno(), length, offset)
    except FileNotFoundError:
        data = _chunked_range(store, digest, offset, length)
    if len(data) != length:
        raise ValueError(f"object {digest[:12]}... holds {len(data)} of the {length} bytes at {offset}")
    return data


def _chunked_range(store: ObjectStore, digest: str, offset: int, length: int) -> bytes:
    """:func:`_object_range` of an object stored in chunks: read through its index (the runner wrote it: anything
    but the form runner/objects.py writes, 1 MiB chunks, is damaged)."""
    try:
        index = read_json_object(store.index_path(digest))
    except FileNotFoundError:
        raise FileNotFoundError(f"object {digest[:12]}... is not in the session's object store at home") from None
    try:
        chunk, names = int(index.get("chunk") or CHUNK_BYTES), [str(c) for c in index["chunks"]]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the chunk index of object {digest[:12]}... is damaged") from exc
    if chunk != CHUNK_BYTES:  # a smaller one would make a range thousands of opens on the ingest thread
        raise ValueError(f"the chunk index of object {digest[:12]}... is damaged (chunks of {chunk} bytes)")
    parts, at = [], offset
    while at < offset + length and at // chunk < len(names):
        with open_regular(store.path(names[at // chunk])) as f:
            piece = os.pread(f.fileno(), min(offset + length - at, chunk - at % chunk), at % chunk)
        if not piece:
            break
        parts.append(piece)
        at += len(piece)
    return b"".join(parts)


def _object_dir(session: Path, sub: str) -> int:
    """A descriptor of ``<session>/checkpoints/objects/<sub>``, each directory made if missing, none followed if it
    is a symlink (one is replaced by a real directory: :meth:`labd.runner.workfs.WorkDir.open_dir`)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(session, 0o700)  # the daemon's own directory of sessions holds it
    root = WorkDir(session)
    try:
        return root.open_dir([*PurePosixPath(OBJECTS_DIR).parts, sub], create=True)
    finally:
        root.close()


def _write_chunk(part: str, data: bytes, offset: int, dir_fd: int | None = None) -> int:
    """Write ``data`` at ``offset`` of the partial file ``part`` (made if missing, emptied by the first chunk, never
    through a symlink; relative to ``dir_fd`` if given); returns the bytes written."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        if offset == 0:
            os.ftruncate(fd, 0)
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return len(data)


def _read(part: str, dir_fd: int | None = None) -> BinaryIO:
    """The file ``part`` opened for reading, without following a symlink (relative to ``dir_fd`` if given)."""
    return os.fdopen(os.open(part, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd), "rb")


def _sha256(f: BinaryIO) -> str:
    """The sha256 of what is left to read of ``f``, a MiB at a time."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _holds(dir_fd: int, part: str, digest: str, index: bool) -> bool:
    """Does the assembled ``part`` hold object ``digest`` (an index of chunks: is it a JSON object)? Made read-only
    when it does."""
    with _read(part, dir_fd) as f:
        ok = isinstance(_json(f.read()), dict) if index else _sha256(f) == digest
        if ok:
            os.fchmod(f.fileno(), 0o444)
    return ok


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
