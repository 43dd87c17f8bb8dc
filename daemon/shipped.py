"""Receiving the files a remote runner ships back (``file.shipped`` events, see :mod:`labd.runner.ship`), and its
checkpoints' objects (``checkpoint.object``: :func:`receive_object`).

Ingest calls :func:`receive` for each such event before it is stored: the chunk is written into the daemon's
copy of the session's work directory (``<sessions>/<id>/work``, where ``labd files`` and downloads read) and
the stored event keeps everything but the bytes. A file is assembled in ``<path>.labd-part`` and renamed into
place only when its last chunk arrived and its sha256 matches, so a reader never sees half a file. Paths are
relative and confined to the work directory (no ``..``, no absolute path, nothing written through a symlink):
a runner writes only into its own session's directory.

A chunk of a file whose content the runner shipped as checkpoint objects comes without its bytes
(``from_object: true``, a range ``offset``/``length`` of at most 4 MiB): it is copied from the session's object
store at home, which ingest filled from the runner's earlier ``checkpoint.object`` events
(:mod:`labd.daemon.object_ranges`); the file is still kept only if the whole holds its sha256 (:mod:`labd.runner.ship`,
"A file's bytes travel once"). A partial file whose chunk could not be written, or whose whole does not hold its
sha256, is removed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from labd.daemon.object_ranges import MAX_INDEX_BYTES, index_ok, object_range
from labd.runner.checkpoint import OBJECTS_DIR
from labd.runner.names import path_of_event
from labd.runner.workfs import WorkDir

__all__ = ["receive", "receive_object"]

#: an object's name in a session's object store: ``ab/<sha256>`` (stored whole) or ``ab/<sha256>.chunks`` (the
#: index of a file stored in chunks), ``ab`` the digest's first two digits
_OBJECT = re.compile(r"([0-9a-f]{2})/(([0-9a-f]{64})(\.chunks)?)")

PART = ".labd-part"
#: offsets and lengths past this are refused (a file of 8 PiB): an int beyond 64 bits raised OverflowError in pwrite
_MAX_OFFSET = 1 << 53


def _uint53(payload: dict[str, Any], key: str) -> int | None:
    """``payload[key]`` if it is an int from 0 to :data:`_MAX_OFFSET` (not a bool, None, a float or a string)."""
    v = payload.get(key)
    return v if type(v) is int and 0 <= v <= _MAX_OFFSET else None


def _mode(payload: dict[str, Any]) -> int | None:
    """The shipped file's permission bits for the daemon's copy (``mode``: an int of at most 0o7777, else None: the
    copy stays 0600). Only the rwx bits are kept (never set-id or sticky), and the owner may always read it (the
    daemon serves ``labd files`` downloads from it)."""
    v = payload.get("mode")
    return (v & 0o777) | 0o400 if type(v) is int and 0 <= v <= 0o7777 else None


def _parts(rel: str) -> list[str] | None:
    """The components of a shipped file's relative path; None for one that would leave the work directory."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or "\x00" in rel:
        return None
    return list(p.parts)


def _session_made(session: Path) -> None:
    """Make a session's directory at home if missing (the daemon's own directory of sessions holds it)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(session, 0o700)


def _work_dir_of(sessions_dir: Path, sid: str, dirs: list[str], create: bool) -> int:
    """A descriptor of ``<sessions>/<sid>/work/<dirs...>``, every component opened without following a symlink (ELOOP
    or ENOTDIR for one that is a symlink or not a directory: the path is refused), those missing made with
    ``create`` (else FileNotFoundError). Each write, rename and removal of a file then goes relative to it, so a
    directory swapped for a symlink meanwhile (a local session's runner can write its work directory) is never
    followed. The home's copy never holds a symlink of its own: a remote runner ships regular files only."""
    session = sessions_dir / sid
    if create:
        _session_made(session)
    fd = os.open(session, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in ("work", *dirs):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)  # the umask decides, as for any directory the daemon makes
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refusal(exc: OSError, what: str) -> str:
    """The stored error for a failure to reach or write a shipped file's place in the home's copy."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_DIRECTORY | O_NOFOLLOW on a symlink: ENOTDIR, as on a file
        return "refused: a directory on its path is a symlink or a file in the home's copy"
    return f"{what}: {exc}"[:300]


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
    parts = _parts(rel)
    if parts is None:
        return {**stored, "error": "refused: the path leaves the work directory"}
    if payload.get("deleted"):  # deleted on the node since it was shipped: so in the daemon's copy
        return _delete(sessions_dir, sid, parts, stored)
    offset, size = _uint53(payload, "offset"), _uint53(payload, "size")
    length = _uint53(payload, "length") if payload.get("from_object") else 0
    if offset is None or size is None or length is None:
        return {**stored, "error": "refused: offset, size and length must be integers from 0 to 2**53"}
    try:
        if payload.get("from_object"):
            data = object_range(sessions_dir / sid, str(payload["sha256"]), size, offset, length)
        else:
            data = base64.b64decode(str(payload.get("data") or ""), validate=True)
    except (OSError, ValueError, binascii.Error) as exc:
        _drop_part(sessions_dir, sid, parts)  # what was assembled can never become the file now
        return {**stored, "error": f"not written: {exc}"[:300]}
    if offset + len(data) > size:
        _drop_part(sessions_dir, sid, parts)
        return {**stored, "error": f"refused: {len(data)} bytes at {offset} of a {size}-byte file"}
    try:
        dfd = _work_dir_of(sessions_dir, sid, parts[:-1], create=True)
    except OSError as exc:
        return {**stored, "error": _refusal(exc, "not written")}
    name, part = parts[-1], parts[-1] + PART
    try:
        stored["bytes"] = _write_chunk(part, data, offset, dfd)
        if payload.get("last"):
            with _read(part, dfd) as f:
                kept = os.fstat(f.fileno()).st_size == size and _sha256(f) == payload["sha256"]
                if kept and (mode := _mode(payload)) is not None:
                    os.fchmod(f.fileno(), mode)
            if not kept:
                _discard(part, dfd)
                return {**stored, "error": "sha256 mismatch: a chunk is missing; the file was not kept"}
            os.replace(part, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except (OSError, ValueError) as exc:
        _discard(part, dfd)  # its next try starts at offset 0
        return {**stored, "error": _refusal(exc, "not written") if isinstance(exc, OSError)
                else f"not written: {exc}"[:300]}
    finally:
        os.close(dfd)
    return stored


def _drop_part(sessions_dir: Path, sid: str, parts: list[str]) -> None:
    """Remove the partial file of ``parts`` in the home's copy, if there is one (nothing is made on the way)."""
    try:
        dfd = _work_dir_of(sessions_dir, sid, parts[:-1], create=False)
    except OSError:
        return
    try:
        _discard(parts[-1] + PART, dfd)
    finally:
        os.close(dfd)


def _delete(sessions_dir: Path, sid: str, parts: list[str], stored: dict[str, Any]) -> dict[str, Any]:
    """Remove the daemon's copy of a file deleted on the node (a regular file only, never through a symlink), and
    the directories that leaves empty (the node may have put a file of the same name in their place)."""
    try:
        dfd = _work_dir_of(sessions_dir, sid, parts[:-1], create=False)
    except FileNotFoundError:
        return stored  # its directory is not there: nor is the file
    except OSError as exc:
        return {**stored, "error": _refusal(exc, "not deleted")}
    try:
        if stat.S_ISREG(os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False).st_mode):
            os.unlink(parts[-1], dir_fd=dfd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return {**stored, "error": f"not deleted: {exc}"[:300]}
    finally:
        os.close(dfd)
    for depth in range(len(parts) - 1, 0, -1):  # the deepest first; stop at the first that is not empty
        try:
            dfd = _work_dir_of(sessions_dir, sid, parts[:depth - 1], create=False)
        except OSError:
            break
        try:
            os.rmdir(parts[depth - 1], dir_fd=dfd)  # rmdir removes no symlink, and only an empty directory
        except OSError:
            break
        finally:
            os.close(dfd)
    return stored


def receive_object(sessions_dir: Path | None, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write the chunk of a checkpoint object in ``payload`` into the session's object store at home
    (``<sessions>/<id>/checkpoints/objects``), where a resume or a branch of the session is made, as
    :func:`receive` does a file: assembled in ``<name>.labd-part``, renamed into place (read-only) once the last
    chunk came and the object holds its digest (an index of chunks: one of the form runner/objects.py writes). An
    object already there is kept (objects never change). Every directory on the way is opened without following a
    symlink, from the session's own (a symlink a runner put there is replaced by a real directory: nothing is written
    beyond it). Best effort: a failure is noted in the returned payload as ``error``; the stored payload has no
    ``data``."""
    stored = {k: v for k, v in payload.items() if k != "data"}
    if sessions_dir is None:
        return stored
    name = str(payload.get("name"))
    m = _OBJECT.fullmatch(name)
    if m is None or m.group(1) != m.group(3)[:2]:
        return {**stored, "error": "refused: not an object name"}
    obj, part = m.group(2), m.group(2) + PART
    offset, size = _uint53(payload, "offset"), _uint53(payload, "size")
    if offset is None or size is None:
        return {**stored, "error": "refused: offset and size must be integers from 0 to 2**53"}
    try:
        data = base64.b64decode(str(payload.get("data") or ""), validate=True)
        if offset + len(data) > size:
            return {**stored, "error": f"refused: {len(data)} bytes at {offset} of a {size}-byte object"}
        fd = _object_dir(sessions_dir / sid, m.group(1))
        try:
            try:
                os.stat(obj, dir_fd=fd, follow_symlinks=False)
                return stored  # there already: objects never change
            except FileNotFoundError:
                pass
            stored["bytes"] = _write_chunk(part, data, offset, fd)
            if payload.get("last"):
                if not _holds(fd, part, size, m.group(3), bool(m.group(4))):
                    _discard(part, fd)
                    return {**stored, "error": "damaged: the object does not hold its digest; it was not kept"}
                os.replace(part, obj, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)
    except (OSError, ValueError, binascii.Error) as exc:
        return {**stored, "error": f"not written: {exc}"[:300]}
    return stored


def _object_dir(session: Path, sub: str) -> int:
    """A descriptor of ``<session>/checkpoints/objects/<sub>``, each directory made if missing, none followed if it
    is a symlink (one is replaced by a real directory: :meth:`labd.runner.workfs.WorkDir.open_dir`)."""
    _session_made(session)
    root = WorkDir(session)
    try:
        return root.open_dir([*PurePosixPath(OBJECTS_DIR).parts, sub], create=True)
    finally:
        root.close()


def _discard(part: str, dir_fd: int) -> None:
    """Remove the partial file ``part`` of the directory ``dir_fd`` (unlinkat: a symlink put there is removed itself,
    nothing beyond it)."""
    with contextlib.suppress(OSError):
        os.unlink(part, dir_fd=dir_fd)


def _write_chunk(part: str, data: bytes, offset: int, dir_fd: int | None = None) -> int:
    """Write ``data`` at ``offset`` of the partial file ``part`` (made if missing, emptied by the first chunk, never
    through a symlink; relative to ``dir_fd`` if given); returns the bytes written. Chunks come in order: one that
    starts past the part's end is refused (ValueError), so the part never has a hole and what is hashed at the end is
    what arrived (a 1-byte chunk near the end of a claimed 16 TiB made a sparse part hashed for hours). One written
    again (an event taken again after its batch was refused) is written over."""
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        if offset == 0:
            os.ftruncate(fd, 0)
        elif offset > (have := os.fstat(fd).st_size):
            raise ValueError(f"a chunk at {offset} is past the {have} bytes that came before it")
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


def _holds(dir_fd: int, part: str, size: int, digest: str, index: bool) -> bool:
    """Is the assembled ``part`` ``size`` bytes holding object ``digest`` (an index of chunks: one as runner/objects.py
    writes, :func:`~labd.daemon.object_ranges.index_ok`)? Made read-only when it is."""
    with _read(part, dir_fd) as f:
        if os.fstat(f.fileno()).st_size != size:
            return False
        ok = index_ok(f.read(MAX_INDEX_BYTES + 1)) if index else _sha256(f) == digest
        if ok:
            os.fchmod(f.fileno(), 0o444)
    return ok
