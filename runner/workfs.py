"""The work directory through directory file descriptors: every path component is opened without following a
symlink, so nothing outside the work directory is read, written, chmodded or removed, whatever symlinks the
session's code planted in it.

The runner may write anywhere outside labd's home; the code a session runs (sandboxed) may write only inside its
work directory, which is enough to plant a symlink there (``sub -> /somewhere/else``). A restore that followed it
would write, or delete, outside the work directory on the runner's authority (found by an attack review). Here a
path is walked one component at a time (``O_NOFOLLOW | O_DIRECTORY`` relative to the previous directory's fd); a
symlink, or any other non-directory, found where a directory belongs is removed itself (never its target) and a
real directory made in its place; the last component is replaced with ``rename`` (which replaces a symlink, not
what it points to), and changed through an fd opened with ``O_NOFOLLOW``.

Relative paths are ``/``-separated names as the filesystem holds them (``str`` with surrogate escapes for bytes
that are not UTF-8, as :func:`os.fsdecode` makes them); ``..``, ``.``, empty components and NUL are refused.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Generator
from pathlib import Path
from types import TracebackType

__all__ = ["WorkDir", "UnsafePath", "parts_of", "skipped_dir"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: a FIFO swapped in after a check must not block the open
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NOT_A_DIR = (errno.ENOTDIR, errno.ELOOP)  # O_DIRECTORY on a non-directory; O_NOFOLLOW on a symlink
#: how many levels of directory fds a walk keeps open (a deeper parent is reopened from the deepest one kept)
_FD_WINDOW = 32


class UnsafePath(ValueError):
    """A path that is not a plain relative path inside the work directory (``..``, absolute, empty, NUL)."""


def parts_of(rel: str) -> list[str]:
    """The components of ``rel``; raises :class:`UnsafePath` unless each is a plain name."""
    parts = rel.split("/")
    if not rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"not a path inside the work directory: {rel!r}")
    return parts


def skipped_dir(name: str) -> bool:
    """Directories a work directory's walk does not enter (not tracked, checkpointed nor restored)."""
    return name.startswith(".") or name == "__pycache__"


class WorkDir:
    """A work directory opened once; every operation goes through directory fds, never through a symlink."""

    def __init__(self, root: Path) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root itself is labd's
        #: the last :meth:`walk` stopped at its ``max_entries`` bound
        self.truncated = False
        #: the first symlinks the last :meth:`walk` passed over (it yields regular files only), at most 3
        self.symlinks: list[str] = []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> WorkDir:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()

    # ---- directories ---------------------------------------------------------------------------------
    def _child_dir(self, fd: int, name: str, create: bool) -> int:
        """Open directory ``name`` of ``fd`` without following a symlink. With ``create``, make it when missing,
        and replace whatever non-directory holds its name (a symlink: the link, not its target)."""
        for _ in range(8):  # a concurrent change between the steps: try again, a few times
            try:
                return os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
            except OSError as exc:
                if not create or exc.errno not in _NOT_A_DIR:
                    raise
                try:
                    if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        continue
                    os.unlink(name, dir_fd=fd)  # unlinkat: removes the symlink itself
                except FileNotFoundError:
                    pass
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
        raise OSError(errno.EAGAIN, f"{name!r} keeps changing while it is made a directory")

    def open_dir(self, parts: list[str], create: bool = False) -> int:
        """A new fd of the directory ``parts`` (components) under the root; see :meth:`_child_dir`."""
        return self._open_below(self.fd, parts, create)

    def _parent(self, rel: str, create: bool = False) -> tuple[int, str] | None:
        """(fd of ``rel``'s directory, its last name); None when a directory on the way is missing or is not a
        real directory (then there is no such file inside the work directory) and ``create`` is false."""
        parts = parts_of(rel)
        try:
            return self.open_dir(parts[:-1], create), parts[-1]
        except OSError as exc:
            if create or exc.errno not in (errno.ENOENT, *_NOT_A_DIR):
                raise
            return None

    # ---- reading -------------------------------------------------------------------------------------
    def walk(self, max_entries: int | None = None) -> Generator[tuple[str, os.stat_result], None, None]:
        """(relative path, lstat) of the regular files, dot directories and ``__pycache__`` skipped, symlinks
        never followed; a directory's files first (by name), then its subdirectories in name order (the order
        of ``os.walk``, top-down, sorted).

        Iterative (no recursion, whatever the depth) and by directory fds, each directory opened relative to its
        parent's fd (kept open for the last :data:`_FD_WINDOW` levels), so neither the depth nor a path's length is
        a limit. ``max_entries``: stop after that many directory entries were listed (files, directories and the
        rest alike); then :attr:`truncated` is set (the walk left out what it did not reach)."""
        self.truncated = False
        self.symlinks = []
        budget = max_entries if max_entries is not None else -1
        pending = [""]
        chain: list[tuple[str, int]] = []  # (prefix, fd) of the directories on the way to the current one
        try:
            while pending:
                prefix = pending.pop()
                while chain and not prefix.startswith(chain[-1][0]):
                    os.close(chain.pop()[1])
                try:
                    if chain:
                        base, base_fd = chain[-1]
                        fd = self._open_below(base_fd, prefix[len(base):].split("/")[:-1])
                    else:
                        fd = self.open_dir(prefix.split("/")[:-1]) if prefix else os.dup(self.fd)
                except OSError:  # gone, or replaced by a symlink, since it was listed
                    continue
                chain.append((prefix, fd))
                if len(chain) > _FD_WINDOW:
                    os.close(chain.pop(0)[1])
                subdirs: list[str] = []
                entries = []
                with os.scandir(fd) as it:
                    for entry in it:
                        if budget == 0:
                            self.truncated = True
                            break
                        budget -= 1
                        entries.append(entry)
                entries.sort(key=lambda e: e.name)
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not skipped_dir(entry.name):
                                subdirs.append(entry.name)
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError:  # vanished meanwhile
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield prefix + entry.name, st
                    elif stat.S_ISLNK(st.st_mode) and len(self.symlinks) < 3:
                        self.symlinks.append(prefix + entry.name)
                if self.truncated:
                    return
                pending.extend(prefix + name + "/" for name in reversed(subdirs))
        finally:
            for _prefix, fd in chain:
                os.close(fd)

    def _open_below(self, fd: int, parts: list[str], create: bool = False) -> int:
        """A new fd of the directory ``parts`` below the directory ``fd`` (no symlink followed; with ``create``,
        made real directories on the way: :meth:`_child_dir`)."""
        fd = os.dup(fd)
        try:
            for name in parts:
                nxt = self._child_dir(fd, name, create)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_file(self, rel: str) -> int:
        """An fd (read-only) of the regular file ``rel``; raises (FileNotFoundError when there is none) if it is
        missing, a symlink or anything but a regular file, or reached through a symlink."""
        where = self._parent(rel)
        if where is None:
            raise FileNotFoundError(errno.ENOENT, "no such file in the work directory", rel)
        dfd, name = where
        try:
            try:
                fd = os.open(name, _FILE, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise FileNotFoundError(errno.ENOENT, "a symlink, not a file", rel) from None
                raise
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", rel)
        return fd

    def sha256(self, rel: str) -> str:
        """The sha256 of regular file ``rel`` (see :meth:`open_file`)."""
        return self.sha256_stat(rel)[0]

    def sha256_stat(self, rel: str) -> tuple[str, int, os.stat_result]:
        """The sha256 of regular file ``rel``, the number of bytes hashed, and the status of the very file hashed
        (its ``fstat``, taken once it was read): a scan must pair a digest with the size of what it hashed, not
        with an earlier ``stat`` of the name, which a rename (an atomic save) may have given to another file."""
        h = hashlib.sha256()
        size = 0
        with open(self.open_file(rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
            return h.hexdigest(), size, os.fstat(f.fileno())

    # ---- changing ------------------------------------------------------------------------------------
    def remove_file(self, rel: str) -> None:
        """Remove ``rel`` unless it is a directory; nothing when there is no such entry inside the work
        directory (a directory on the way missing or a symlink)."""
        where = self._parent(rel)
        if where is None:
            return
        dfd, name = where
        try:
            if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def chmod_file(self, rel: str, mode: int) -> None:
        """Set the permission bits of regular file ``rel`` (through an fd: a symlink is never followed)."""
        fd = self.open_file(rel)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def place(self, rel: str, src_dir: int, src_name: str) -> None:
        """Move ``src_name`` of directory ``src_dir`` to ``rel``: its directories made real directories on the
        way, a directory in its place removed (a symlink or file in its place is replaced by the rename)."""
        where = self._parent(rel, create=True)
        assert where is not None
        dfd, name = where
        try:
            try:
                if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    shutil.rmtree(name, dir_fd=dfd)  # fd-based: never follows a symlink inside
            except FileNotFoundError:
                pass
            os.replace(src_name, name, src_dir_fd=src_dir, dst_dir_fd=dfd)
        finally:
            os.close(dfd)

    def make_private_dir(self, name: str) -> int:
        """Create directory ``name`` (0700) at the root; returns its fd."""
        os.mkdir(parts_of(name)[0], 0o700, dir_fd=self.fd)
        return os.open(name, _DIR, dir_fd=self.fd)

    def remove_tree(self, name: str) -> None:
        """Remove directory ``name`` of the root and everything in it, if it exists (never through a symlink)."""
        try:
            shutil.rmtree(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)
