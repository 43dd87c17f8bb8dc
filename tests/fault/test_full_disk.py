"""A full disk under the daemon's log: logging never takes the daemon down.

``serve --detach`` writes the daemon's log to ``<home>/daemon.log``; when that disk filled up, the ingest thread's
"store unavailable" line failed to write, then the main loop's report of that failure, and the daemon exited. Here
the daemon's stdout and stderr are ``/dev/full`` (every write fails with ENOSPC) for its whole life."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from labd.daemon.logsetup import LossyStream
from labd.ipc.client import Client
from tests.conftest import kill_runners, wait_until

pytestmark = pytest.mark.fault


def test_a_daemon_whose_log_cannot_be_written_serves_sessions_to_the_end(isolated_env: Path) -> None:
    """With every log write failing, the daemon starts, runs a session that prints and emits to completion, answers
    status, and stops cleanly on SIGTERM (exit 0)."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve",
                                 "--log-format", "json", "--log-level", "debug"], stdout=full, stderr=full)
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"the daemon exited ({proc.returncode}) on a failed log write"
            try:
                with Client(isolated_env, timeout=2) as c:
                    return bool(c.status())
            except Exception:  # noqa: BLE001 - not up yet
                return False
        wait_until(ready, timeout=60, what="daemon ready")
        with Client(isolated_env) as c:
            sid = c.start("labd_testflows:ticker", params={"n": 20, "delay": 0.01})
            assert c.wait(sid, timeout=60)["status"] == "completed"
            ticks = [e for e in c.history(sid) if e["kind"] == "custom"]
            assert len(ticks) == 20
            assert proc.poll() is None
        proc.terminate()  # what `labd shutdown` and systemd send
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_runners(isolated_env)


def test_the_log_stream_drops_failed_writes_and_says_so_once_it_can() -> None:
    """A write that raises (ENOSPC, a closed stream) returns 0 and is counted; the next write that succeeds is
    preceded, on a line of its own, by how many were dropped."""
    class Flaky(io.StringIO):
        failing = True

        def write(self, s: str) -> int:
            if self.failing:
                raise OSError(28, "No space left on device")
            return super().write(s)

    sink = Flaky()
    log = LossyStream(sink)
    assert log.write("one\n") == 0 and log.write("two\n") == 0
    log.flush()
    assert log.dropped == 2
    sink.failing = False
    log.write("three\n")
    lines = sink.getvalue().splitlines()
    assert lines[0] == "" and "2 log writes failed" in lines[1] and lines[2] == "three"
    assert log.dropped == 0
