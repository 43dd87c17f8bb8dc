"""Open a file inside a directory without following symlinks: for serving a session's work directory.

Checking a path (``Path.resolve()``, ``is_relative_to()``) and then opening it again is a race: code that
runs in the session can swap a directory of the path for a symlink between the two, and the open then
lands outside (a security review got ``<home>/daemon.key`` served that way). :func:`open_beneath` never
looks a path up twice: it opens the root, then each component relative to the directory opened before it
(``dir_fd``) with ``O_NOFOLLOW``, and checks what it finally opened with ``fstat`` on that same fd.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["UnsafePath", "open_beneath", "open_regular", "read_regular", "listed_name", "path_bytes"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO must not block


class UnsafePath(PermissionError):
    """``open_beneath`` refused the path: malformed, or it names a symlink, a non-regular or hard-linked file.

    A :class:`PermissionError`, so an ``except OSError`` covers it together with a missing file
    (:class:`FileNotFoundError`); catch it on its own to tell "refused" (403) from "gone" (404)."""


def path_bytes(path_b64: str) -> bytes | None:
    """The name a file event's (or a files row's) ``path_b64`` gives, as bytes; None when it is not the base64 of a
    name (empty, NUL in it, not base64: a damaged record, since a runner's events are its session's code's)."""
    try:
        raw = base64.b64decode(path_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if raw and b"\x00" not in raw else None


def listed_name(files: Iterable[dict[str, Any]], path: str, path_b64: str | None = None) -> str | None:
    """The exact relative path of the file ``session.files`` lists as ``path`` (and ``path_b64``), to open with
    :func:`open_beneath`; None when the record lists no such file.

    A name that is not UTF-8 is listed by its display form (``path``, each undecodable byte written ``\\xNN``) and
    its bytes (``path_b64``): it is asked for with both, and opened by its bytes. Asked for without ``path_b64``,
    ``path`` names only a file listed without one: a file really named ``a\\xff`` is not the file whose bytes are
    ``a`` and 0xFF, and neither is served for the other."""
    want = path_b64 or None
    if not any(f.get("path") == path and (f.get("path_b64") or None) == want for f in files):
        return None
    if want is None:
        return path
    raw = path_bytes(want)
    return None if raw is None else os.fsdecode(raw)


def _components(relpath: str) -> list[str]:
    """The names of ``relpath``, or :class:`UnsafePath` if it is empty, absolute, or has ``.``, ``..``, ``//``, NUL."""
    if not relpath or relpath.startswith("/") or "\0" in relpath:
        raise UnsafePath(f"not a relative path: {relpath!r}")
    names = relpath.split("/")
    if any(n in ("", ".", "..") for n in names):
        raise UnsafePath(f"empty, '.' or '..' component in {relpath!r}")
    return names


def _open_at(name: str, flags: int, dir_fd: int, relpath: str) -> int:
    """``os.open(name, flags, dir_fd=dir_fd)``, with "that is a symlink" raised as :class:`UnsafePath`.

    ``O_NOFOLLOW`` fails on a symlink with ELOOP, or with ENOTDIR when ``O_DIRECTORY`` is set too; an
    ``lstat`` then tells a symlink from a plain file used as a directory (only to pick the error: either
    way nothing was opened)."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(name, dir_fd)):
            raise UnsafePath(f"symlink at {name!r} in {relpath!r}") from None
        raise


def _is_link(name: str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_beneath(root: Path | str, relpath: str, *, links_ok: bool = False) -> BinaryIO:
    """Open ``relpath`` (``/``-separated, as a session's file record lists it) inside directory ``root``, read-only.

    No symlink is followed in any component of ``relpath``, and the result is checked on the opened fd, so
    nothing swapped in concurrently can make it open a file outside ``root``. ``root`` itself is trusted (the
    caller's own path, e.g. the work directory the daemon reports), but not its last component if that is a symlink
    (the session's code may replace its work directory by a link to labd's home: the daemon's key was served so).

    Refused with :class:`UnsafePath`: an empty or absolute path, a ``.``, ``..`` or empty component, a NUL
    byte; a symlink anywhere (also the last component, also one pointing inside ``root``); anything that is
    not a regular file (directory, FIFO — opened non-blocking so it cannot hang —, socket, device); and, unless
    ``links_ok`` (checkpoint objects, which branches share by hard links), a regular file with more than one hard
    link. A hard link is a second name for a file that may live
    outside ``root`` (the session's code could ``link()`` a file of the daemon's user it can reach into its
    work directory), and from the fd alone we cannot tell where the other names are; files a session writes
    have one link, so refusing ``st_nlink > 1`` costs little. A missing component raises the ``OSError``
    of ``os.open`` (:class:`FileNotFoundError`, or ``NotADirectoryError`` for a file used as a directory).

    Returns a buffered binary file object that owns the fd (blocking mode restored); close it (``with``).
    Every intermediate directory fd is closed, also on errors.
    """
    names = _components(relpath)
    try:  # root's own last component not followed either: a session may replace its work directory by a link
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(str(root), None):
            raise UnsafePath(f"the directory {str(root)!r} is a symlink") from None
        raise
    try:
        for name in names[:-1]:
            parent, fd = fd, -1
            try:
                fd = _open_at(name, _DIR_FLAGS, parent, relpath)
            finally:
                os.close(parent)
        parent, fd = fd, -1
        try:
            fd = _open_at(names[-1], _FILE_FLAGS, parent, relpath)
        finally:
            os.close(parent)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"not a regular file: {relpath!r}")
        if st.st_nlink != 1 and not links_ok:
            raise UnsafePath(f"file with {st.st_nlink} hard links: {relpath!r}")
        os.set_blocking(fd, True)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def open_regular(path: str | os.PathLike[str], *, follow: bool = False) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file, not through a symlink at its last component (unless
    ``follow``), and never blocking on the open (a FIFO put in its place must not hang the reader): for files the
    daemon reads from a session's directory, which that session's code may write (its event spool, its checkpoint
    objects). ``OSError`` otherwise: ``ELOOP`` for a symlink, ``EINVAL`` for anything not a regular file,
    ``FileNotFoundError``."""
    fd = os.open(path, (_FILE_FLAGS & ~os.O_NOFOLLOW if follow else _FILE_FLAGS) | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or directory)", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path`` (symlinks followed: a user's own config may be one) if it is a regular file of at most
    ``limit`` bytes, else ``OSError`` saying which (:func:`open_regular`; ``EFBIG`` past ``limit``): for files a user
    names, read while the daemon serves (the agent registry, at every session start) or by a command, where a FIFO or
    a device (``/dev/zero``) named by mistake blocked every request, or grew the reader without end. At most
    ``limit`` + 1 bytes are read."""
    with open_regular(path, follow=True) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit:,} bytes")
    return data


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data`` (permissions ``mode``) through a new file of a random name beside it (``O_EXCL``):
    never through a symlink someone put at ``path`` or at a fixed temporary name (attack review), and a reader sees
    the old content or the new, never half of it."""
    import tempfile

    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=f".{os.path.basename(target)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
