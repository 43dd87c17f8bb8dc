"""Fixtures of the runner-channel unit tests (test_channel*.py): a fake daemon's ROUTER on
an ipc:// endpoint in the test's runtime directory. (Named like the integration suites' real ``daemon`` fixture,
which unit tests do not use.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from labd.runner.channel import Channel
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
