"""Fixtures of the unit tests: for the runner-channel tests (test_channel*.py), a fake daemon's ROUTER on an ipc://
endpoint in the test's runtime directory (named like the integration suites' real ``daemon`` fixture, which unit
tests do not use); for tests of the store's reads, a migrated SQLite store and its writer (``sqlite_store``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labd.runner.channel import Channel
from labd.store.db import migrate, open_engine
from labd.store.queries import Store
from labd.store.writer import BatchWriter
from tests.unit.test_channel import FakeDaemon


@pytest.fixture
def endpoint(isolated_env: Any) -> str:
    """An ipc:// endpoint in the test's (short) runtime directory."""
    return f"ipc://{os.environ['XDG_RUNTIME_DIR']}/chan.sock"


@pytest.fixture
def daemon(endpoint: str) -> Iterator[FakeDaemon]:
    """A fake daemon (a ROUTER that records and acks) on ``endpoint``."""
    d = FakeDaemon(endpoint)
    yield d
    d.close()


@pytest.fixture
def channels() -> Iterator[list[Channel]]:
    """Channels to close after the test (quickly: nothing waits for acks at teardown)."""
    made: list[Channel] = []
    yield made
    for ch in made:
        ch.close(timeout=0.0)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[Store, BatchWriter]]:
    """A migrated SQLite store in ``tmp_path``: its reads (``Store``) and its one writer (``BatchWriter``)."""
    eng = open_engine(f"sqlite:///{tmp_path / 'labd.db'}")
    migrate(eng)
    w = BatchWriter(eng)
    yield Store(eng), w
    w.close()
    eng.dispose()
