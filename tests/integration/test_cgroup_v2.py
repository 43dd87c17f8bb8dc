"""A session's group in cgroup v2, on this machine's real unified hierarchy: the kernel side of what
daemon/cgroups.py does there (the kill of a whole group at once, membership, adoption after a restart, strays).

This machine mounts cgroup v2 beside v1 (a hybrid layout) with its memory and pids controllers bound to v1, so the
daemon itself makes its groups in v1 (tests/integration/test_cgroups.py) and the v2 layouts' detection is tested on
stand-in trees (tests/unit/test_cgroups.py). Stand-ins cannot show what the kernel does with ``cgroup.kill``,
``cgroup.procs`` and ``/proc/<pid>/cgroup``: here :class:`SessionCgroups` works on a directory of the real v2
mount, without controllers (no limits, which need them), so every v2 path but the limits' writes runs against the
kernel. Needs root (as in CI) and a cgroup v2 mount with ``cgroup.kill`` (Linux 5.14+); elsewhere the module skips,
saying why."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from labd.daemon import cgroups
from labd.daemon.cgroups import Hierarchy, SessionCgroups
from tests.conftest import alive, wait_until


def _v2_mount() -> Path | None:
    """The cgroup v2 mount this process may make groups in (as root), else None."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, kind = line.split()[:3]
        if kind == "cgroup2" and os.access(point, os.W_OK):
            return Path(point)
    return None


MOUNT = _v2_mount()
pytestmark = pytest.mark.skipif(MOUNT is None, reason="needs root and a writable cgroup v2 mount")


class _Log:
    """Collects what the groups log (a warning is a finding the test looks at)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    info = warning


@pytest.fixture
def v2() -> Iterator[tuple[SessionCgroups, _Log]]:
    """A daemon's groups in a fresh directory of the real v2 mount; whatever a test leaves is killed and removed."""
    assert MOUNT is not None
    base = MOUNT / f"labd-test-{secrets.token_hex(4)}"
    base.mkdir()
    if not (base / "cgroup.kill").exists():
        base.rmdir()
        pytest.skip("this kernel's cgroup v2 has no cgroup.kill (Linux 5.14+)")
    log = _Log()
    cg = SessionCgroups([Hierarchy(2, (), base, MOUNT)], None, log)
    try:
        yield cg, log
    finally:  # by the kernel's own means, not the code under test (which a failing test may have found broken)
        for child in [p for p in base.iterdir() if p.is_dir()]:
            (child / "cgroup.kill").write_text("1")
            wait_until(lambda c=child: _rmdir(c), what=f"{child} removed after its kill")
        base.rmdir()


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except OSError:
        return False
    return True


def _join(procs: list[str], pid: int) -> None:
    for path in procs:
        Path(path).write_text(str(pid))


def _spawn(code: str) -> subprocess.Popen[bytes]:
    """A Python process in a session of its own running ``code`` once it reads a line (so that it can be put in a
    group before it does anything): ``go(p)`` sends the line."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
                            start_new_session=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def go(p: subprocess.Popen[bytes]) -> None:
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.close()


def _reap(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


# Ignores SIGTERM and keeps forking: each link forks the next (in a session of its own), prints its pid and exits,
# so at any time one or two processes run, each born in the group of the one before.
FORKER = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    pid = os.fork()
    if pid:
        os.write(1, f"{pid}\\n".encode())
        os._exit(0)
    os.setsid()
    time.sleep(0.05)
"""

# Forks a child that forks again into a session of its own and exits: the grandchild has no parent in the
# process's tree any more (an escapee); it prints its pid and sleeps.
ESCAPER = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(1, f"{os.getpid()}\\n".encode())
        time.sleep(60)
    os._exit(0)
time.sleep(60)
"""

SLEEPER = "import time; time.sleep(60)"


def test_release_kills_a_forking_group_at_once_through_the_kernel(v2: tuple[SessionCgroups, _Log],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """At a session's end a v2 group is killed by ``cgroup.kill``: every process in it dies, including a chain that
    keeps forking new processes in sessions of their own and ignores SIGTERM, and the group is removed (the kernel
    refuses to remove a group with a process in it). The signal rounds over ``cgroup.procs`` (v1's way) are turned
    off here, so the kernel's kill alone must do it. A process outside the group lives on."""
    cg, log = v2
    monkeypatch.setattr(cgroups, "_kill_member", lambda pid, group: None)
    joins, _ = cg.create("s1", None)
    assert joins is not None
    group = Path(joins[0]).parent
    outside, sleeper, forker = _spawn(SLEEPER), _spawn(SLEEPER), _spawn(FORKER)
    try:
        for p in (sleeper, forker):
            _join(joins, p.pid)
            go(p)
        assert forker.stdout is not None
        links = [int(forker.stdout.readline()) for _ in range(3)]  # the chain runs, each link born in the group
        assert all(pid != forker.pid for pid in links)
        assert sleeper.pid in cg.members("s1") and len(cg.members("s1")) >= 2
        cg.release("s1")
        wait_until(lambda: (cg.sweep(), not group.exists())[1], what="group killed and removed")
        assert sleeper.wait(10) == -signal.SIGKILL
        assert forker.stdout.read() is not None  # end of file: no link of the chain holds the pipe any more
        assert outside.poll() is None
        assert not cg.has("s1") and log.lines == []
    finally:
        _reap(outside, sleeper, forker)


def test_an_escapee_stays_a_member_and_dies_with_the_group(v2: tuple[SessionCgroups, _Log]) -> None:
    """A process that double-forks into a session of its own (nothing of the session's tree is its parent any
    more) is still in the session's group: the kernel keeps the membership whatever a process does to its
    parentage, and the group's end kills it."""
    cg, _ = v2
    joins, _ = cg.create("s1", None)
    assert joins is not None
    runner = _spawn(ESCAPER)
    try:
        _join(joins, runner.pid)
        go(runner)
        assert runner.stdout is not None
        escapee = int(runner.stdout.readline())
        assert os.getsid(escapee) != os.getsid(runner.pid)
        assert psutil.Process(escapee).ppid() != runner.pid
        assert cg.members("s1") == {runner.pid, escapee}
        cg.release("s1")
        wait_until(lambda: not alive(escapee) and (cg.sweep(), not Path(joins[0]).parent.exists())[1],
                   what="the escapee killed with its group")
    finally:
        _reap(runner)


def test_a_restarted_daemon_adopts_a_runners_v2_group_from_proc(v2: tuple[SessionCgroups, _Log]) -> None:
    """After a restart, a runner found running is adopted with the group it is in: the next daemon reads the group's
    name from the ``0::`` line of ``/proc/<pid>/cgroup`` (beside the v1 lines of a hybrid layout) and releases that
    group at the session's end."""
    cg, log = v2
    joins, _ = cg.create("s1", None)
    assert joins is not None and MOUNT is not None
    group = Path(joins[0]).parent
    runner = _spawn(SLEEPER)
    try:
        _join(joins, runner.pid)
        assert f"0::/{group.relative_to(MOUNT)}\n" in Path(f"/proc/{runner.pid}/cgroup").read_text()
        after = SessionCgroups(cg.hierarchies, None, log)  # the next daemon: it knows no session yet
        after.adopt("s1", runner.pid)
        assert after.group_of("s1") == group.name and after.members("s1") == {runner.pid}
        after.release("s1")
        assert runner.wait(10) == -signal.SIGKILL
        wait_until(lambda: (after.sweep(), not group.exists())[1], what="the adopted group removed")
        assert log.lines == []
    finally:
        _reap(runner)


def test_a_stray_v2_group_is_killed_and_removed(v2: tuple[SessionCgroups, _Log],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A group under the daemon's directory that no session of this daemon owns (a session that ended while no
    daemon ran) is killed and removed once it has been a stray for the grace, and the kill is logged with what was
    in it; the group of a session the daemon owns is left alone."""
    cg, log = v2
    monkeypatch.setattr(cgroups, "STRAY_GRACE_S", 0.0)
    stray = cg.hierarchies[0].base / "r-leftover"
    stray.mkdir()
    joins, _ = cg.create("s1", None)
    assert joins is not None
    orphan, owner = _spawn(SLEEPER), _spawn(SLEEPER)
    try:
        (stray / "cgroup.procs").write_text(str(orphan.pid))
        _join(joins, owner.pid)
        wait_until(lambda: (cg.sweep(), not stray.exists())[1], what="the stray group removed")
        assert orphan.wait(10) == -signal.SIGKILL
        assert owner.poll() is None and cg.members("s1") == {owner.pid}
        assert log.lines == [("killing what a session left in its cgroup while no daemon ran",
                              {"group": "r-leftover", "pids": [orphan.pid]})]
    finally:
        _reap(orphan, owner)
