"""Which store errors mean the store cannot be reached now (a read is refused ``store_unavailable`` or tried again)
and which are a wrong statement, a bug to report with its traceback (review of the change: SQLite raises the same
``OperationalError`` class for both, and a bug had become "the store cannot be reached just now")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from labd.store.db import unreachable

pytestmark = pytest.mark.timeout(60)


def test_a_wrong_statement_is_not_the_stores_absence(tmp_path: Path) -> None:
    """A missing table or column, or a syntax error, on a real SQLite file: not unreachable."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE t (a INTEGER)"))
        for bad in ("SELECT * FROM nope", "SELECT b FROM t", "SELEC 1"):
            with pytest.raises(sa_exc.OperationalError) as err:
                conn.execute(sa.text(bad))
            assert not unreachable(err.value), bad
    engine.dispose()


def test_a_locked_file_a_failing_disk_and_a_dropped_connection_are(tmp_path: Path) -> None:
    """A database locked by another program, an I/O error, a lost connection (the driver's interface error, a
    disconnection): unreachable; and an error that is not the store's at all is not."""
    for text in ("database is locked", "disk I/O error", "connection failed: server closed the connection"):
        assert unreachable(sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(text))), text
    assert unreachable(sa_exc.InterfaceError("SELECT 1", {}, sqlite3.InterfaceError("closed")))
    assert unreachable(sa_exc.DisconnectionError("gone"))
    assert not unreachable(ValueError("not the store's"))
