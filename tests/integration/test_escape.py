"""A session's code cannot start a process outside its runner's tree with ``clone(CLONE_PARENT)``: the clone
filter refuses it (runner/template.py, runner/sandbox/seccomp.py), and the monitor kills such a process should the
filter be missing (daemon/escapees.py)."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import DaemonProc, alive, runner_pid, wait_until

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the workflow makes the raw clone system call by its x86_64 number (56)")


def _output(client: Any, sid: str) -> str:
    return "".join(e["payload"]["text"] for e in client.history(sid) if e["kind"] == "output")


def _cloned(client: Any, sid: str) -> tuple[int, int]:
    text = wait_until(lambda: (lambda t: t if "cloned " in t else None)(_output(client, sid)), timeout=60,
                      what="the workflow's clone")
    words = text.split("cloned ")[1].split()
    return int(words[0]), int(words[2])


def test_clone_with_clone_parent_is_refused_in_a_session(shared_daemon) -> None:
    """A workflow's raw clone(CLONE_PARENT) fails with EPERM (before the filter, the child was a sibling of the
    runner that no limit counted and that outlived `labd stop`); the runner carries the filter."""
    with shared_daemon.client() as client:
        sid = client.start("labd_testflows:clone_parent", memory="100M")
        pid, err = _cloned(client, sid)
        runner = runner_pid(client, sid)
        status = psutil.Process(runner).status()
        seccomp = [ln for ln in Path(f"/proc/{runner}/status").read_text().splitlines() if ln.startswith("Seccomp:")]
        client.stop(sid, grace=0.5)
        client.wait(sid, timeout=60)
    assert (pid, err) == (-1, 1), f"clone returned {pid}, errno {err}"
    assert status != psutil.STATUS_ZOMBIE and seccomp == ["Seccomp:\t2"], seccomp


@pytest.fixture
def unfiltered(isolated_env) -> Iterator[DaemonProc]:
    """A daemon whose template installs no clone filter: the monitor's backstop alone."""
    d = DaemonProc(isolated_env, extra_env={"LABD_CLONE_FILTER": "off"}).start()
    try:
        yield d
    finally:
        d.stop()


def test_a_child_of_the_template_it_did_not_fork_is_killed(unfiltered) -> None:
    """Without the filter, the clone(CLONE_PARENT) child (setsid, empty environment: nothing marks it as the
    session's) is a child of the runner template that the template never announced: the monitor kills it within
    seconds, while the session runs on, and logs a warning; the daemon says at start that the filter is off."""
    with unfiltered.client() as client:
        sid = client.start("labd_testflows:clone_parent", memory="100M")
        pid, err = _cloned(client, sid)
        assert pid > 0 and err == 0
        template = psutil.Process(runner_pid(client, sid)).ppid()
        assert psutil.Process(pid).ppid() == template  # a sibling of the runner, outside its tree
        wait_until(lambda: not alive(pid), timeout=30, what="the escapee killed")
        assert client.session(sid)["status"] == "running"
        client.stop(sid, grace=0.5)
        client.wait(sid, timeout=60)
    log = unfiltered.log()
    assert "killed a process that escaped its session's tree" in log and f'"pid":{pid},' in log
    assert "the runner template has no clone filter" in log
