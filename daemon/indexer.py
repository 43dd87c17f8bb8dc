"""The search indexer: a daemon thread that keeps ``<home>/search.db`` (see :mod:`labd.store.search`) up to
date with the store, about once a second. It reads the store and writes only its own index file."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import structlog

from labd.daemon.warnlimit import FailureLog
from labd.store.search import IndexHints, SearchIndex

__all__ = ["Indexer"]


class Indexer(threading.Thread):
    """Runs :meth:`SearchIndex.update` every ``interval`` seconds until stopped."""

    def __init__(self, home: Path, engine: Any, hints: IndexHints | None = None, interval: float = 1.0) -> None:
        super().__init__(name="labd-indexer", daemon=True)
        self.index = SearchIndex(home / "search.db", engine, hints)
        self.interval = interval
        self._halt = threading.Event()  # not `_stop`: Thread has a method of that name
        self._wake = threading.Event()  # a pass now: sessions to forget
        self.log = structlog.get_logger("labd.indexer")
        self._forget_lock = threading.Lock()
        self._to_forget: set[str] = set()  # deleted sessions still in the index (a forget that failed is retried)
        #: per kind of work that is failing: logged once, then a line a minute while it repeats, then its end
        self.failures = FailureLog(self.log, "search index works again", clock=time.monotonic)

    def forget(self, sids: list[str]) -> None:
        """Have deleted sessions dropped from the index: this thread does it at once (woken), so the caller, the
        daemon's main loop, never waits for the index (dropping 10,000 sessions from a million documents took
        15 s, with no request answered meanwhile). A failure (a full disk) is logged and retried at each pass; a
        daemon that stops first leaves them to its next start, whose first full scan drops every session the store
        no longer has (:meth:`SearchIndex.update`)."""
        with self._forget_lock:
            self._to_forget.update(sids)
        self._wake.set()

    def _forget_pending(self) -> None:
        with self._forget_lock:
            ids = sorted(self._to_forget)
        if not ids:
            return
        try:
            self.index.forget(ids)
        except Exception as exc:  # noqa: BLE001 - a broken index must never take the daemon down
            self.failures.failed("search index: dropping deleted sessions failed; will retry", exc, sessions=len(ids))
            return
        self.failures.worked("search index: dropping deleted sessions failed; will retry")
        with self._forget_lock:
            self._to_forget.difference_update(ids)

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self._pass()
            self._wake.wait(self.interval)
            self._wake.clear()
        self.index.close()


    def _pass(self) -> None:
        """One turn: drop what was deleted, then index what is new."""
        self._forget_pending()
        try:
            self.index.update()
        except Exception as exc:  # noqa: BLE001 - a broken index must never take the daemon down
            self.failures.failed("search indexing failed; will retry", exc)
        else:
            self.failures.worked("search indexing failed; will retry")
