"""A pass of the limits monitor works on a copy of the watched sessions taken when it began (reading /proc takes
a while on a busy machine). A session whose runner exited, and that was resumed and watched again before the pass
got to it, must keep its new runner: an exploratory test saw the stale entry's "vanished" unwatch, bury and SIGTERM
the *resumed* runner (~1 resume in 10 right after a kill with ~500 processes on the box, nearly always with 8,000),
and its note mark the new run vanished."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labd.daemon.limits import Limits
from labd.daemon.monitor import Monitor
from labd.daemon.supervisor import Running
from tests.unit.test_breach_sample import _Socket
from tests.unit.test_supervisor_disk_full import _supervisor


@pytest.fixture
def runners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two stand-in runners (the ended run's and the resumed run's), each in a process group of its own."""
    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.timeout(30)
def test_a_stale_pass_leaves_the_resumed_runner_watched(runners: list[subprocess.Popen[bytes]]) -> None:
    """The old runner is gone when a pass that copied its entry gets to it; by then the session was unwatched (its
    run ended) and watched again with the resumed runner: the resumed runner stays watched, nothing of it is buried,
    and no "vanished" note goes to the supervisor."""
    old, new = runners
    monitor = Monitor(None, sample_interval=0.1, record_interval=1.0)  # type: ignore[arg-type]  # no thread
    monitor.notes, monitor.out = _Socket(), _Socket()  # type: ignore[assignment]
    monitor.watch("s1", old.pid, Limits(), time.time())
    stale = list(monitor._watched.values())  # noqa: SLF001 - what a pass copies when it begins
    old.kill()
    old.wait()
    monitor.unwatch("s1")  # the supervisor saw the runner exit: the session ended
    monitor.watch("s1", new.pid, Limits(), time.time())  # ... and was resumed at once
    monitor._pass(stale, time.monotonic(), record=False)  # noqa: SLF001 - the pass that began before all that
    assert monitor.snapshot_of("s1") is not None
    assert monitor._watched["s1"].pid == new.pid  # noqa: SLF001
    assert all(b.pid != new.pid for b in monitor.burials.pending())
    assert not [n for n in monitor.notes.sent if n[0] == "vanished"]  # type: ignore[attr-defined]
    assert new.poll() is None


def test_a_vanished_note_about_an_earlier_runner_does_not_mark_the_current_run() -> None:
    """A "vanished" note names the runner it is about: one about the ended run's runner, read after the session was
    resumed, leaves the resumed run alone (it would have been ended as vanished a moment later)."""
    sup = _supervisor()[0]
    sup.running["s1"] = Running("s1", pid=4242, create_time=0.0, limits=Limits(), started=0.0)
    sup.on_note(("vanished", "s1", None, None, 4241))
    assert sup.running["s1"].vanished_at == 0.0
    sup.on_note(("vanished", "s1", None, None, 4242))
    assert sup.running["s1"].vanished_at > 0.0


def test_a_limit_note_about_an_earlier_runner_does_not_stop_the_current_run() -> None:
    """A limit note names the runner it is about too: one about the ended run's runner (its wall time, read after
    the session was resumed) neither records a breach for the resumed run nor stops it; one about the current
    runner does both."""
    sup, _, posts = _supervisor()
    sup.running["s1"] = Running("s1", pid=4242, create_time=0.0, limits=Limits(), started=0.0)
    wall = {"limit": "wall time", "measured": 3.0, "max": 2.0, "unit": "seconds", "action": "stop"}
    sup.on_note(("limit", "s1", wall, None, 4241))
    assert not [p for p in posts if p[1] == "limit.exceeded"] and sup.running["s1"].step is None
    sup.on_note(("limit", "s1", wall, None, 4242))
    assert [p[2]["limit"] for p in posts if p[1] == "limit.exceeded"] == ["wall time"]
    assert sup.running["s1"].step is not None


def test_a_session_whose_end_is_posted_but_not_committed_is_stopping() -> None:
    """Between a runner's exit and the commit of its ``session.ended`` the store still says the session runs: a
    resume then is told ``stopping`` (and the SDK waits for the end) rather than "not running (status running)";
    once the session runs or waits in the queue again, it is not."""
    sup, _, _ = _supervisor()
    sup.running["s1"] = Running("s1", pid=4242, create_time=0.0, limits=Limits(), started=0.0)
    assert not sup.stopping("s1")
    sup.running.pop("s1")
    sup._ended("s1")  # noqa: SLF001 - what on_exit does once it posted the end
    assert sup.stopping("s1")
    sup.queue.push(sup.queue.entry("s1", "demo.sleep", {}, Limits(), "/w", 0, 9.0))  # resumed: queued again
    assert not sup.stopping("s1")


def test_stop_or_kill_between_a_runners_exit_and_the_commit_of_its_end_says_it_has_just_ended() -> None:
    """A stop or kill in that window found no runner and answered "not running (status running)", contradicting
    itself; it now says the session has just ended (its end is being recorded). Still ``not_running``, so scripts
    that take that code for "already over" go on as before; other sessions keep the old words."""
    from types import SimpleNamespace

    from labd.daemon.api.sessions import _not_running

    sup, _, _ = _supervisor()
    sup._ended("s1")  # noqa: SLF001 - the runner exited, its end posted, not committed
    req = SimpleNamespace(daemon=SimpleNamespace(supervisor=sup))
    err = _not_running(req, {"id": "s1", "status": "running"})  # type: ignore[arg-type]
    assert (err.code, err.message) == ("not_running", "session s1 has just ended (its end is being recorded)")
    done = _not_running(req, {"id": "s2", "status": "completed"})  # type: ignore[arg-type]
    assert done.message == "session s2 is not running (status completed)"


def test_a_stale_pass_neither_takes_nor_acts_on_the_resumed_runs_kernel_breach(
        runners: list[subprocess.Popen[bytes]]) -> None:
    """The kernel OOM-killed a process in the *resumed* run's cgroup. A pass that began before the resume, sampling
    the ended run's entry, left the breach alone: it neither reads it (the count would be taken, the current pass
    would then find nothing) nor kills the resumed runner under the ended run's name (its note names the old pid
    and the supervisor drops it: a kill nobody recorded). The current entry's check reports it and kills."""
    old, new = runners
    reads: list[str] = []

    class _Groups:  # stands in for SessionCgroups: one OOM kill in the session's current group
        def adopt(self, sid: str, pid: int) -> None:
            pass

        def breach(self, sid: str, limit: int) -> dict[str, Any] | None:
            reads.append(sid)
            return {"limit": "memory", "measured": limit, "max": limit, "unit": "bytes", "action": "kill",
                    "enforced_by": "cgroup", "oom_kills": 1}

    monitor = Monitor(None, sample_interval=0.1, record_interval=1.0, cgroups=_Groups())  # type: ignore[arg-type]
    monitor.notes, monitor.out = _Socket(), _Socket()  # type: ignore[assignment]
    monitor.watch("s1", old.pid, Limits(memory=150 << 20), time.time())
    stale = monitor._watched["s1"]  # noqa: SLF001 - the entry a pass copied when it began
    monitor.unwatch("s1", bury=False)
    monitor.watch("s1", new.pid, Limits(memory=150 << 20), time.time())
    reports: list[dict[str, Any]] = []
    assert not monitor.kernel_breach("s1", 150 << 20, reports.append, stale)
    assert reads == [] and reports == [] and new.poll() is None
    assert monitor.kernel_breach("s1", 150 << 20, reports.append, monitor._watched["s1"])  # noqa: SLF001
    assert reads == ["s1"] and reports[0]["oom_kills"] == 1
    assert new.wait(10) == -9


def test_a_runner_the_kernel_killed_at_its_limit_is_reported_as_a_breach_when_a_pass_finds_it_gone(
        runners: list[subprocess.Popen[bytes]]) -> None:
    """The kernel OOM-killed the runner itself at its cgroup's memory limit, and the monitor's pass found it gone
    before the supervisor handled its exit: the pass sends the breach (a limit note naming the runner) before its
    "vanished" note. Before, it only unwatched the session, and the supervisor's check at the exit, finding nothing
    watched, let the session end "runner killed by SIGKILL" instead of "killed: memory ... (held by the kernel)"."""
    runner = runners[0]

    class _Groups:  # one OOM kill in the session's group
        def adopt(self, sid: str, pid: int) -> None:
            pass

        def breach(self, sid: str, limit: int) -> dict[str, Any] | None:
            return {"limit": "memory", "measured": limit, "max": limit, "unit": "bytes", "action": "kill",
                    "enforced_by": "cgroup", "oom_kills": 1}

    monitor = Monitor(None, sample_interval=0.1, record_interval=1.0, cgroups=_Groups())  # type: ignore[arg-type]
    monitor.notes, monitor.out = _Socket(), _Socket()  # type: ignore[assignment]
    monitor.burials.cgroups = None  # nothing to release here: the stand-in has no groups
    monitor.watch("s1", runner.pid, Limits(memory=150 << 20), time.time())
    runner.kill()
    runner.wait()
    monitor._pass(list(monitor._watched.values()), time.monotonic(), record=False)  # noqa: SLF001
    kinds = [(n[0], n[4]) for n in monitor.notes.sent]  # type: ignore[attr-defined]
    assert kinds == [("limit", runner.pid), ("vanished", runner.pid)], monitor.notes.sent  # type: ignore[attr-defined]
    assert monitor.notes.sent[0][2]["enforced_by"] == "cgroup"  # type: ignore[attr-defined]
