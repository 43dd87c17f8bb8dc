"""The limits monitor remembers every process it has seen in a session's tree (its key: pid and start time), to find
one that left the tree and to bury what the session leaves; only processes still alive are worth remembering."""

from __future__ import annotations

import subprocess
import time

import pytest

from labd.daemon.limits import Limits
from labd.daemon.monitor import Monitor
from tests.conftest import wait_until
from tests.unit.test_breach_sample import _Socket


@pytest.mark.timeout(60)
def test_a_sessions_known_processes_are_those_still_alive() -> None:
    """A session that keeps starting short-lived commands (an agent running tools for days): the keys its passes
    remember stay those of its live processes, not one per process any pass ever saw (the set, and the by-key map
    each pass builds from it, grew for the session's whole life)."""
    runner = subprocess.Popen(["sh", "-c", "while :; do sleep 0.05; done"], start_new_session=True)
    try:
        monitor = Monitor(None, sample_interval=0.1, record_interval=1.0)  # type: ignore[arg-type]  # no thread
        monitor.notes, monitor.out = _Socket(), _Socket()  # type: ignore[assignment]
        monitor.watch("s1", runner.pid, Limits(), time.time())
        w = monitor._watched["s1"]  # noqa: SLF001
        seen: set[tuple[int, int]] = set()

        def a_pass() -> bool:
            monitor._pass([w], time.monotonic(), record=False)  # noqa: SLF001
            seen.update(p.key for p in w.members if p.pid != runner.pid)
            return len(seen) >= 20

        wait_until(a_pass, timeout=45, what="20 commands seen by the passes")
        assert runner.poll() is None
        assert len(w.keys) <= 3, len(w.keys)  # the runner and the command of the moment (one just ending, maybe)
        assert w.keys >= {p.key for p in w.members}
    finally:
        runner.kill()
        runner.wait()
