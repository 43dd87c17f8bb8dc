"""Removing a directory tree that a session's code may have made hard to remove: shared by the daemon (a deleted
session's directory at home: :mod:`labd.daemon.retention`) and a Ray node (the same session's directory there:
:mod:`labd.runner.node_cleanup`)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

__all__ = ["remove_tree"]


def remove_tree(path: Path) -> list[str]:
    """Remove the directory tree ``path``, also where a session's code made parts of it read-only (a Go module
    cache, ``chmod -R a-w results``: ``rmtree`` alone leaves those behind for a daemon that is not root). Never
    follows a symbolic link. Returns what could not be removed (``"path: reason"``), empty when all is gone."""
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return []
    _unlock_dirs(path)  # the owner may always give itself back the rights to empty its own directories
    left: list[str] = []
    shutil.rmtree(path, onerror=lambda _func, where, exc: left.append(f"{where}: {exc[1]}"))
    return left


def _unlock_dirs(top: Path) -> None:
    """Give the owner read, write and search rights on every directory under ``top`` (top-down, so each is
    listable once its parent is), through file descriptors opened without following a symbolic link."""
    stack = [os.fspath(top)]
    while stack:
        where = stack.pop()
        try:
            fd = os.open(where, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # gone, not a directory, or a symbolic link put in its place: not ours to change
            continue
        try:
            mode = os.fstat(fd).st_mode
            if mode & stat.S_IRWXU != stat.S_IRWXU:
                os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode) | stat.S_IRWXU)  # the directory fd names
            with os.scandir(f"/proc/self/fd/{fd}") as entries:
                stack.extend(os.path.join(where, e.name) for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            pass  # not the daemon's to change (another owner): rmtree reports what stays
        finally:
            os.close(fd)
