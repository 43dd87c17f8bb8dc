"""daemon/priority.py: a runner is made to yield the CPU to the daemon (docs/design.md, "Event path end to end")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labd.daemon.priority import group_nice, lower_priority

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


def test_every_thread_and_the_autogroup_go_steps_below_ours(child: subprocess.Popen[str]) -> None:
    """All threads the process has go ``steps`` nice values below ours, and so does its session's autogroup below
    ours where the kernel has them (that value is what competes with the daemon under autogroup scheduling); our
    own values stay as they were."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    group0 = group_nice("self")  # None where the kernel has no autogroups, or this test runs in the root one
    target = min(19, ours + 7)
    lower_priority(child.pid, 7)
    nices = thread_nices(child.pid)
    assert len(nices) >= 2 and set(nices) == {target}
    if group0 is not None and group_nice(child.pid) is not None:
        assert group_nice(child.pid) == min(19, group0 + 7)
        assert group_nice("self") == group0
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours


def test_steps_are_relative_to_the_base_and_capped(child: subprocess.Popen[str]) -> None:
    """The values are set relative to ``base`` (the daemon's own by default), capped at 19; a negative step count
    is refused; a process that is gone raises nothing."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    lower_priority(child.pid, 3, base=(ours + 1, None))
    assert set(thread_nices(child.pid)) == {min(19, ours + 4)}
    lower_priority(child.pid, 30)
    assert set(thread_nices(child.pid)) == {19}
    with pytest.raises(ValueError):
        lower_priority(child.pid, -1)
    child.kill()
    child.wait()
    lower_priority(child.pid, 5)  # gone: nothing to do, nothing raised
    assert not Path(f"/proc/{child.pid}").exists()


def test_a_thread_started_while_the_threads_are_set_is_set_too(child: subprocess.Popen[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread the runner starts while its threads are being set (here: one the first listing does not show, as a
    thread cloned just after it) inherits its creator's old value; it is found by listing again, so no thread is
    left at the daemon's level (a CI run found a runner thread at 0 with runner_nice = 15)."""
    import labd.daemon.priority as priority

    real = os.listdir
    calls = []

    def late_thread(path: str) -> list[str]:  # the first listing of the child's threads misses its second thread
        names = real(path)
        if path == f"/proc/{child.pid}/task":
            calls.append(path)
            if len(calls) == 1:
                return [str(child.pid)]
        return names

    monkeypatch.setattr(priority.os, "listdir", late_thread)
    target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    lower_priority(child.pid, 5)
    monkeypatch.undo()
    nices = thread_nices(child.pid)
    assert len(nices) >= 2 and set(nices) == {target}, nices
    assert len(calls) == 3  # listed until a listing shows no thread not yet set
