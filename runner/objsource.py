"""The side of the work directory when a file is copied into the object store (:mod:`labd.runner.objects`): the file
is opened without following a symlink, its read errors are the source's, not the store's, and the exceptions that
leave a file out of a checkpoint without failing it (:class:`SourceChanged`, :class:`TooLarge`, :class:`OverCap`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from labd.runner.workfs import WorkDir

__all__ = ["TooLarge", "OverCap", "SourceChanged", "Source", "open_source"]


class TooLarge(Exception):  # noqa: N818 - not an error of the store: the file is left out
    """A file being copied into the store passed the store's :attr:`ObjectStore.limit` (it grew since its scan)."""


class OverCap(Exception):  # noqa: N818 - not an error of the store: the file is left out
    """Storing the file would add more than the store's :attr:`ObjectStore.new_limit` bytes (``adds``: at least this
    many); nothing of it was stored."""

    def __init__(self, adds: int) -> None:
        super().__init__(f"it would add at least {adds} bytes of new objects")
        self.adds = adds


class SourceChanged(Exception):  # noqa: N818 - not an error of the store: the file is left out
    """The file being copied into the store is not the one its scan saw; ``why``: ``gone`` (no regular file there any
    more: removed, renamed away, or a symlink or anything else in its place), ``changed`` (another content than the
    digest expected) or ``unreadable`` (opening or reading it failed). An error of the work directory's side, never of
    the store's: nothing was stored."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


class Source:
    """A source file's reads, an OSError of which is the work directory's (:class:`SourceChanged`), not the store's."""

    def __init__(self, fi: Any) -> None:
        self._fi = fi

    def read(self, n: int) -> bytes:
        try:
            return bytes(self._fi.read(n))
        except OSError as exc:
            raise SourceChanged("unreadable", f"reading it failed: {exc}") from exc


def open_source(src: Path, within: tuple[WorkDir, Path] | None) -> int:
    """A read-only fd of regular file ``src``: through ``within`` (the work directory, opened, and its path: no symlink
    in any component below it), else with O_NOFOLLOW on its last component. Raises :class:`SourceChanged`."""
    try:
        if within is not None:
            wd, root = within
            return wd.open_file(src.relative_to(root).as_posix())
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(src))
        return fd
    except FileNotFoundError as exc:
        raise SourceChanged("gone", f"no such regular file: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
            raise SourceChanged("gone", "a symlink, not a file") from None
        raise SourceChanged("unreadable", f"opening it failed: {exc}") from exc
    except ValueError as exc:  # not a path below the work directory
        raise SourceChanged("unreadable", str(exc)) from exc
