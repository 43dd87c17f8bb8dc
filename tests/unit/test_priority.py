"""daemon/priority.py: a runner is made to yield the CPU to the daemon (docs/design.md, "Event path end to end")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labd.daemon.priority import lower_priority

# a child with a second thread, in a session of its own (as a runner is), that waits to be killed
CHILD = "import threading, time; threading.Thread(target=time.sleep, args=(600,), daemon=True).start(); " \
        "print('up', flush=True); time.sleep(600)"


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "up"
        yield p
    finally:
        p.kill()
        p.wait()


def thread_nices(pid: int) -> list[int]:
    return [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")]


def test_every_thread_and_the_autogroup_get_the_niceness(child: subprocess.Popen[str]) -> None:
    """All threads the process has get the niceness, and so does its session's autogroup where the kernel has
    them (that value is what competes with the daemon under autogroup scheduling); our own stays as it was."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, ours + 7)
    lower_priority(child.pid, target)
    nices = thread_nices(child.pid)
    assert len(nices) >= 2 and set(nices) == {target}
    group = Path(f"/proc/{child.pid}/autogroup")
    if group.exists():
        assert group.read_text().split()[-1] == str(target)
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours


def test_never_lowers_and_zero_changes_nothing(child: subprocess.Popen[str]) -> None:
    """0 leaves the process alone; a niceness below the one it has is not applied (lowering needs a privilege:
    it must neither fail nor raise); a process that is gone raises nothing."""
    before = thread_nices(child.pid)
    lower_priority(child.pid, 0)
    assert thread_nices(child.pid) == before
    high = min(19, max(before) + 3)
    lower_priority(child.pid, high)
    lower_priority(child.pid, high - 1)
    assert set(thread_nices(child.pid)) == {high}
    group = Path(f"/proc/{child.pid}/autogroup")
    if group.exists():
        assert group.read_text().split()[-1] == str(high)
    child.kill()
    child.wait()
    lower_priority(child.pid, 5)  # gone: nothing to do, nothing raised
    assert not Path(f"/proc/{child.pid}").exists()
