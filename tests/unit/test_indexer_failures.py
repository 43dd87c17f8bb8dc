"""The search indexer's log while its index cannot be written (daemon/indexer.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from labd.daemon import indexer as indexer_mod
from labd.daemon.indexer import Indexer


class _Index:
    def __init__(self) -> None:
        self.fail: BaseException | None = None

    def update(self) -> None:
        if self.fail is not None:
            raise self.fail

    def forget(self, ids: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_full_disk_is_logged_once_then_a_line_a_minute_then_its_end(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """While the index cannot be written (a full disk) the indexer retries every second: the first failure is
    logged with its traceback, the repeats are not (it wrote a traceback a second), a minute later one line counts
    them, and when indexing works again it says so. A different error is logged in full again."""
    clock = [0.0]
    monkeypatch.setattr(indexer_mod.time, "monotonic", lambda: clock[0])
    ix = Indexer(tmp_path, engine=None)
    fake = _Index()
    ix.index = fake  # type: ignore[assignment]
    ix.interval = 0.0
    def one_pass() -> None:
        ix._pass()

    fake.fail = OSError(errno.ENOSPC, "No space left on device")
    with capture_logs() as logs:
        for _ in range(30):
            one_pass()
            clock[0] += 1.0
    assert [e["log_level"] for e in logs] == ["error"] and logs[0].get("exc_info")
    with capture_logs() as logs:
        for _ in range(40):
            one_pass()
            clock[0] += 1.0
    assert len(logs) == 1 and logs[0]["log_level"] == "warning" and logs[0]["failures_not_logged"] >= 29
    fake.fail = OSError(errno.EIO, "Input/output error")
    with capture_logs() as logs:
        one_pass()
        fake.fail = None
        one_pass()
    assert [e["log_level"] for e in logs] == ["error", "info"] and logs[1]["event"] == "search index works again"
