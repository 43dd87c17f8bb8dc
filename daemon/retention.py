"""Retention on the daemon side: removing deleted sessions' directories and the automatic prune policy.

The record is deleted by ingest (the only writer, see ``Ingest._delete``); this module removes what lies
outside the database — each session's directory (work directory, spool, logs) — and runs the configured
policy (``[daemon] retention = "30d"``) once an hour (more often for a
short retention). Directories are removed on a background thread so a
large work directory never stalls the main loop; a daemon that dies meanwhile finishes the job at its next
start (:meth:`Retention.sweep` removes session directories that have no session row).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import structlog

from labd.runner.trees import remove_tree
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
