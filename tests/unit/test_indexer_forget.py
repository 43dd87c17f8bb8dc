"""The indexer's forget: dropping deleted sessions from the search index never raises into the daemon's main loop."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.indexer import Indexer
from labd.store.db import migrate, open_engine


def test_a_forget_that_fails_is_kept_and_retried_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`labd rm` on a full disk: the index's DELETE raises 'database or disk is full'. The main loop only hands the
    sessions over (``Indexer.forget`` does no index work: it had ended the daemon, and later stalled it); the
    indexer's pass logs the failure and keeps the sessions, and a later pass drops them once the index can be
    written."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    ix = Indexer(tmp_path, engine, interval=0.01)
    calls: list[list[str]] = []
    real = ix.index.forget

    def full(ids: Any) -> None:
        calls.append(list(ids))
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ix.index, "forget", full)
    ix.forget(["s1", "s2"])  # no exception, and nothing done on the caller's thread
    ix.forget(["s3"])
    assert calls == []
    ix._forget_pending()  # what the indexer's loop does before each update: fails, no exception
    assert calls == [["s1", "s2", "s3"]]
    monkeypatch.setattr(ix.index, "forget", lambda ids: (calls.append(list(ids)), real(ids)))
    ix._forget_pending()
    assert calls[-1] == ["s1", "s2", "s3"]
    ix._forget_pending()  # nothing left to drop
    assert len(calls) == 2
    ix.index.close()


def test_the_indexer_thread_drops_a_deletion_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forget wakes the indexer's thread: the deleted sessions leave the index within its next pass, not an
    interval later (the interval here is an hour), and the caller does not wait for it."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    ix = Indexer(tmp_path, engine, interval=3600)
    dropped = threading.Event()
    real = ix.index.forget

    def forget(ids: Any) -> None:
        real(ids)
        if "s9" in ids:
            dropped.set()

    monkeypatch.setattr(ix.index, "forget", forget)
    ix.start()
    try:
        ix.forget(["s9"])
        assert dropped.wait(30), "the indexer's thread did not drop the session"
    finally:
        ix.stop()
        ix.join(30)
    assert not ix.is_alive()
