"""The indexer's forget: dropping deleted sessions from the search index never raises into the daemon's main loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.indexer import Indexer
from labd.store.db import migrate, open_engine


def test_a_forget_that_fails_is_kept_and_retried_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`labd rm` on a full disk: the index's DELETE raises 'database or disk is full'. Indexer.forget logs it and
    keeps the sessions to drop (the main loop called it, and the exception had ended the daemon); the next pass of
    the indexer's loop drops them once the index can be written."""
    engine = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(engine)
    ix = Indexer(tmp_path, engine, interval=0.01)
    calls: list[list[str]] = []
    real = ix.index.forget

    def full(ids: Any) -> None:
        calls.append(list(ids))
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ix.index, "forget", full)
    ix.forget(["s1", "s2"])  # no exception
    ix.forget(["s3"])
    assert calls == [["s1", "s2"], ["s1", "s2", "s3"]]
    monkeypatch.setattr(ix.index, "forget", lambda ids: (calls.append(list(ids)), real(ids)))
    ix._forget_pending()  # what the indexer's loop does before each update
    assert calls[-1] == ["s1", "s2", "s3"]
    ix._forget_pending()  # nothing left to drop
    assert len(calls) == 3
    ix.index.close()
