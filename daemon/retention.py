"""Retention on the daemon side: removing deleted sessions' directories and the automatic prune policy.

The record is deleted by ingest (the only writer, see ``Ingest._delete``); this module removes what lies
outside the database — each session's directory (work directory, spool, logs) — and runs the configured
policy (``[daemon] retention = "30d"``) once an hour (more often for a
short retention). Directories are removed on a background thread so a
large work directory never stalls the main loop; a daemon that dies meanwhile finishes the job at its next
start (:meth:`Retention.sweep` removes session directories that have no session row).
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import structlog

from labd.store.retention import prune_candidates

__all__ = ["Retention", "remove_tree"]

POLICY_EVERY_S = 3600.0  # at most this long between policy runs; a short retention runs more often


class Retention:
    """Directory removal and the periodic prune, driven by the daemon's main loop."""

    def __init__(self, sessions_dir: Path, engine: Any, request_delete: Callable[[list[str]], None], *,
                 older_than: float | None, statuses: list[str] | None) -> None:
        self.sessions_dir = sessions_dir
        self.engine = engine
        self.request_delete = request_delete
        self.older_than = older_than
        self.statuses = statuses
        self.log = structlog.get_logger("labd.retention")
        self._next_policy = time.monotonic() + 2.0  # not in the middle of start-up

    def remove_dirs(self, sids: list[str]) -> threading.Thread:
        """Remove the directories of deleted sessions in the background (:func:`remove_tree`); what cannot be
        removed is logged with its path, and tried again at the next start (:meth:`sweep`)."""
        def run() -> None:
            for sid in sids:
                path = self.sessions_dir / sid
                if path.is_dir() and not path.is_symlink():
                    left = remove_tree(path)
                    if left:
                        self.log.warning("could not remove all of a deleted session's directory", session=sid,
                                         path=str(path), left=len(left), first=left[:3])
        t = threading.Thread(target=run, name="labd-retention", daemon=True)
        t.start()
        return t

    def sweep(self, known: Container[str]) -> list[str]:
        """Remove session directories whose session no longer exists (a deletion interrupted by a crash);
        ``known``: every session id (one query, not one per directory)."""
        orphans = [p.name for p in self.sessions_dir.iterdir() if p.is_dir() and p.name not in known] \
            if self.sessions_dir.is_dir() else []
        if orphans:
            self.log.info("removing directories of deleted sessions", count=len(orphans))
            self.remove_dirs(orphans)
        return orphans

    def tick(self) -> None:
        """Run the automatic policy when it is due."""
        if self.older_than is None or time.monotonic() < self._next_policy:
            return
        self._next_policy = time.monotonic() + min(POLICY_EVERY_S, max(1.0, self.older_than / 10))
        ids = prune_candidates(self.engine, ended_before=time.time() - self.older_than, statuses=self.statuses)
        if ids:
            self.log.info("retention policy: pruning sessions", count=len(ids), older_than_s=self.older_than)
            self.request_delete(ids)


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
