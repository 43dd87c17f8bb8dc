"""A cgroup per session (daemon/cgroups.py), for real: this machine's kernel holds the limits the /proc monitor
cannot see (pipe buffers, threads), keeps every process of a session in its group, and the session's own code cannot
leave it. The daemon runs as root here (as in CI); an unprivileged run has no groups to test and skips the module."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from labd.ipc.events import TERMINAL_STATUSES
from tests.conftest import DaemonProc, alive, module_daemon_on, pointed_at, runner_pid, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a cgroup per session needs root (or systemd delegation)")

# Landlock for the runner (with bubblewrap the runner runs unconfined: docs/security.md), a small task bound
CONFIG = '[daemon]\nsession_tasks = 256\n\n[sandbox]\nmechanism = "landlock"\n'


@pytest.fixture(scope="module")
def cg_daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProc]:
    with module_daemon_on(request, CONFIG) as d:
        yield d


@pytest.fixture
def client(cg_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with pointed_at(cg_daemon, monkeypatch).client() as c:
        yield c


def _groups(pid: int) -> dict[str, Path]:
    """The session groups (controller -> directory) process ``pid`` is in, from /proc and the mounts."""
    mounts = {c: line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[2] == "cgroup" for c in ("memory", "pids") if c in line.split()[3].split(",")}
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for c in names.split(","):
            if c in mounts:
                out[c] = Path(mounts[c]) / path.lstrip("/")
    return out


@contextmanager
def _next_daemon(d: DaemonProc, leftover: int, **env: str) -> Iterator[DaemonProc]:
    """A daemon on ``d``'s home after ``d`` was killed (``d``'s environment and ``env``), stopped afterwards; the
    process ``leftover`` is killed then if it outlived the test."""
    again = DaemonProc(d.home, extra_env={**d.test_env, **env}).start()  # type: ignore[attr-defined]
    try:
        yield again
    finally:
        again.stop()
        if alive(leftover):
            os.kill(leftover, signal.SIGKILL)


def test_status_says_the_kernel_holds_the_limits(client) -> None:
    """``labd status`` names the kernel limits in force (this machine: cgroup v1, memory and pids)."""
    assert client.status()["kernel_limits"] == "cgroup v1 (memory, pids)"


def test_a_session_and_its_children_live_in_its_own_group(client) -> None:
    """The runner joins a group named after its session before the workflow runs (``session.started`` says so), its
    children are born in it, the group carries the session's memory limit and the daemon's task bound, and it is gone
    once the session has ended."""
    sid = client.start("labd_cgroupflows:groups", memory="200M")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final
    started = next(iter(client.history(sid, kinds=["session.started"])))["payload"]
    assert started["cgroup"] == "joined"
    result = next(iter(client.history(sid, kinds=["session.finished"])))["payload"]["result"]
    runner, child = ({line.split(":", 2)[1]: line.split(":", 2)[2] for line in result[who].splitlines()}
                     for who in ("runner", "child"))
    assert "/labd-" in runner["memory"] and "/labd-" in runner["pids"], runner  # a group of this daemon's
    assert Path(runner["memory"]).name == Path(runner["pids"]).name  # the same group in each hierarchy
    assert (child["memory"], child["pids"]) == (runner["memory"], runner["pids"])  # children are born in it

    sleeper = client.start("demo.sleep", params={"seconds": 60}, memory="200M")
    pid = wait_until(lambda: client.session(sleeper)["status"] == "running" and client.session(sleeper)["pid"])
    groups = _groups(pid)
    assert groups["memory"].parent.name.startswith("labd-") and groups["memory"].name == groups["pids"].name
    assert int((groups["memory"] / "memory.limit_in_bytes").read_text()) == 200 << 20
    assert (groups["pids"] / "pids.max").read_text().strip() == "256"
    client.stop(sleeper, grace=1)
    client.wait(sleeper, timeout=30)
    wait_until(lambda: not any(g.exists() for g in groups.values()), timeout=30, what="the group removed")


def test_pipe_buffers_count_against_the_memory_limit(client) -> None:
    """400 MiB held in pipe buffers (kernel memory, in no process's pages: the /proc monitor sees none of it; it ran
    on holding 1.5 GiB under a 200 MiB limit before) stop at a 150 MiB limit: the kernel holds it, and the session
    ends as a memory breach saying so."""
    sid = client.start("labd_cgroupflows:pipe_hoard", params={"mb": 400}, memory="150M")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "failed", final
    assert final["reason"] == "killed: memory reached its limit 150 MiB (held by the kernel)", final["reason"]
    breach = next(iter(client.history(sid, kinds=["limit.exceeded"])))["payload"]
    assert breach["enforced_by"] == "cgroup" and breach["oom_kills"] >= 1 and breach["max"] == 150 << 20
    held = [int(e["payload"]["text"].split()[1]) for e in client.history(sid, kinds=["output"])
            if e["payload"].get("text", "").startswith("held ")]
    assert held and max(held) < 160, held


def test_a_thread_storm_stops_at_the_task_bound(client) -> None:
    """Threads are not processes (``procs`` does not count them); the group's pids.max (``session_tasks`` = 256)
    does: a workflow starting 5,000 threads gets fewer than 256 (the runner's own threads count too) and goes on; the
    session's record says why its code was refused (a warning log event from the monitor)."""
    sid = client.start("labd_cgroupflows:thread_storm", params={"n": 5000, "hold": 4})
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final
    started = next(iter(client.history(sid, kinds=["session.finished"])))["payload"]["result"]
    assert 100 < started < 256, started
    said = [e["payload"]["event"] for e in client.history(sid, kinds=["log"]) if e["payload"]["level"] == "warning"]
    assert any("reached its task limit" in text for text in said), said


def test_the_session_cannot_move_itself_out_of_its_group(client) -> None:
    """The runner's Landlock policy leaves the cgroup file systems readable, not writable: a workflow writing its
    pid into the top group's cgroup.procs (as root, which the kernel would allow) is refused."""
    sid = client.start("labd_cgroupflows:leave_group")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final
    assert next(iter(client.history(sid, kinds=["session.finished"])))["payload"]["result"] == \
        "refused: Permission denied"


def test_no_cgroup_hierarchy_is_writable_by_the_session(client) -> None:
    """Every mounted cgroup hierarchy is read-only to the runner, not only memory and pids (an attack review: with the
    freezer's ``release_agent`` writable, a root workflow had the kernel run its script as root outside Landlock,
    which moved the daemon into the session's group; the session's end killed the daemon), and so is the rest of
    /sys (machine settings a root session could otherwise change)."""
    sid = client.start("labd_cgroupflows:write_any_cgroup")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final
    assert next(iter(client.history(sid, kinds=["session.finished"])))["payload"]["result"] == {}


def test_a_session_resumed_while_its_last_run_is_buried_keeps_its_new_group(client) -> None:
    """``labd kill`` then ``labd resume`` at once: the ended run's leftovers (a child in a session of its own that
    ignores SIGTERM) are still being buried when the resumed runner starts in a new group. The burial's end kills and
    removes the *old* group only: the resumed session runs on (it killed the resumed runner before: the release went
    by session, and the session's group was the new one by then), and what the last run left is killed at once (it
    lived on, out of every burial, in the resumed session's name)."""
    sid = client.start("labd_testflows:leave_stubborn_then_wait", params={"seconds": 120})
    stubborn = int(wait_until(lambda: next((e["payload"]["text"].split()[1] for e in client.history(sid, kinds=[
        "output"]) if e["payload"]["text"].startswith("stubborn ")), None), timeout=60, what="the stubborn child"))
    wait_until(lambda: any(s["name"] == "wait" and s["status"] == "running" for s in client.session(sid)["steps"]),
               timeout=60, what="step wait running")
    old = _groups(stubborn)
    try:
        client.kill(sid)
        # at once (the SDK waits out the kill, then resumes): the child ignoring SIGTERM is still in its 2 s burial
        client.resume(sid)
        pid = wait_until(lambda: client.session(sid)["status"] == "running" and client.session(sid)["pid"],
                         timeout=60, what="the resumed session running")
        new = _groups(pid)
        assert new["memory"] != old["memory"] and new["memory"].parent == old["memory"].parent
        # the resumed runner's watch ends the last run's burial: what it left is killed and its group removed
        wait_until(lambda: not alive(stubborn) and not any(g.exists() for g in old.values()), timeout=30,
                   what="the last run's leftovers killed and its group removed")
        assert alive(pid) and client.session(sid)["status"] == "running", client.session(sid)
        assert all(g.exists() for g in new.values())
    finally:
        if alive(stubborn):
            os.kill(stubborn, signal.SIGKILL)
    client.stop(sid, grace=1)
    assert client.wait(sid, timeout=30)["status"] == "cancelled"


def test_a_fresh_daemons_first_spare_waits_in_the_first_sessions_group(request: pytest.FixtureRequest,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner template's first spare, forked before any launch, already waits in the group the daemon made for
    the first session, and that session runs in it (the spare is its runner): the first session after a start does
    not move between groups on its start's path (it did, with a Landlock walk: ~3x a later session's start)."""
    from tests.integration.test_start_spare import spares

    with module_daemon_on(request, CONFIG) as d, pointed_at(d, monkeypatch).client() as c:
        template = c.status()["template_pid"]
        spare = wait_until(lambda: (s := spares(template)) and s[0], timeout=30, what="a spare runner")
        waiting = _groups(spare.pid)
        assert waiting["memory"].parent.name.startswith("labd-"), waiting  # a session group of this daemon's
        assert waiting["memory"].name == waiting["pids"].name
        sid = c.start("demo.sleep", params={"seconds": 60})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
        assert pid == spare.pid and _groups(pid) == waiting
        c.stop(sid, grace=1)
        c.wait(sid, timeout=30)


def test_a_restarted_daemon_adopts_the_group_and_removes_it_at_the_end(request: pytest.FixtureRequest,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon is killed while a session runs; the next daemon adopts the runner and its group: the kernel limit
    still holds the runner, and once the session is stopped the group is removed."""
    with module_daemon_on(request, CONFIG) as d:
        with pointed_at(d, monkeypatch).client() as c:
            sid = c.start("demo.sleep", params={"seconds": 120}, memory="300M")
            pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
        groups = _groups(pid)
        assert groups["memory"].parent.name.startswith("labd-")
        d.kill9()
        with _next_daemon(d, leftover=pid) as again, again.client() as c:
            wait_until(lambda: sid in c.status()["running"], what="adopted")
            assert _groups(pid) == groups  # still in its group, its limit in force
            c.stop(sid, grace=1)
            c.wait(sid, timeout=30)
            wait_until(lambda: not alive(pid) and not any(g.exists() for g in groups.values()), timeout=30,
                       what="runner gone and the group removed")


def test_release_kills_what_is_in_the_group_and_nothing_else(tmp_path: Path) -> None:
    """At a session's end whatever is still in its group is killed, however it got there (here: a process that is
    no child of any runner), and only that: a process outside the group lives on; the group is removed."""
    import subprocess

    from labd.daemon.cgroups import SessionCgroups, detect

    class Log:
        def warning(self, *a: object, **kw: object) -> None:
            raise AssertionError((a, kw))

    hierarchies, said = detect(tmp_path / "home")
    assert hierarchies, said
    cg = SessionCgroups(hierarchies, 64, Log())
    joins, _ = cg.create("s1", 64 << 20)
    assert joins is not None
    inside = subprocess.Popen(["sleep", "60"], start_new_session=True)
    outside = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for procs in joins:
            Path(procs).write_text(str(inside.pid))
        assert cg.members("s1") == {inside.pid}
        cg.release("s1")
        assert inside.wait(10) == -signal.SIGKILL
        assert outside.poll() is None
        wait_until(lambda: (cg.sweep(), not any(Path(p).parent.exists() for p in joins))[1], what="group removed")
    finally:
        for p in (inside, outside):
            p.kill()
            p.wait()
        cg.close()


def test_the_end_of_a_runs_burial_releases_that_runs_group_not_the_sessions_next(tmp_path: Path) -> None:
    """A session ended and was resumed before its burial was over: the resumed runner is in a new group. When the
    burial ends, releasing the ended run's group kills what is in that group only; the resumed runner's group and
    process live on (the release went by session: the suite's resume-after-kill test saw the resumed runner killed
    when the burial ended between the resume's launch and its runner's watch)."""
    import subprocess

    from labd.daemon.cgroups import SessionCgroups, detect

    hierarchies, said = detect(tmp_path / "home")
    assert hierarchies, said
    cg = SessionCgroups(hierarchies, 64, _NoWarnings())
    first, _ = cg.create("s1", None)
    last = cg.group_of("s1")
    run = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    try:
        for procs in first or []:
            Path(procs).write_text(str(run[0].pid))
        cg.make_ahead()
        second, _ = cg.create("s1", None)  # the resume's launch
        assert first and second and first != second
        for procs in second:
            Path(procs).write_text(str(run[1].pid))
        cg.release("s1", last)  # the first run's burial ends
        assert run[0].wait(10) == -signal.SIGKILL
        assert run[1].poll() is None and cg.has("s1") and cg.members("s1") == {run[1].pid}
        wait_until(lambda: (cg.sweep(), not any(Path(p).parent.exists() for p in first))[1], what="old group gone")
        cg.release("s1")
        assert run[1].wait(10) == -signal.SIGKILL and not cg.has("s1")
    finally:
        for p in run:
            p.kill()
            p.wait()
        cg.close()


class _NoWarnings:
    def warning(self, *a: object, **kw: object) -> None:
        raise AssertionError((a, kw))


def test_a_stopped_daemon_leaves_no_group_behind(request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that ran a session and is stopped (SIGTERM, nothing running) removes its groups and its directory in
    each hierarchy: the group made ahead for the next runner too, which the template's spare still held at shutdown
    (an attack review found 350 such leftovers, a directory and a group per hierarchy for each home a test daemon
    had used)."""
    from labd.daemon.cgroups import base_name

    with module_daemon_on(request, CONFIG) as d:
        with pointed_at(d, monkeypatch).client() as c:
            sid = c.start("labd_cgroupflows:groups")
            assert c.wait(sid, timeout=60)["status"] == "completed"
        # the daemon's directory in each hierarchy: under the group it inherited from this test process
        bases = [g / base_name(d.home) for g in _groups(os.getpid()).values()]
        wait_until(lambda: all(b.exists() and any(x.is_dir() for x in b.iterdir()) for b in bases),
                   what="the group made ahead")
        d.stop()
    assert not any(b.exists() for b in bases), [list(b.iterdir()) for b in bases if b.exists()]


def test_what_a_session_left_while_no_daemon_ran_is_killed(request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon is killed, then the session's runner dies too, leaving an orphan with a clean environment in a
    session of its own (no rule of the /proc monitor finds it): the next daemon finds the session lost, and the
    group it left (owned by no session of its own) is a stray: what is in it is killed and the group removed (an
    attack review: the orphan lived on for ever)."""
    fast = CONFIG.replace("[daemon]\n", "[daemon]\nsample_interval = 0.2\n")  # a sweep every 2 s, not 20
    with module_daemon_on(request, fast) as d:
        with pointed_at(d, monkeypatch).client() as c:
            sid = c.start("labd_cgroupflows:leave_orphan")
            line = wait_until(lambda: next((e["payload"]["text"] for e in c.history(sid, kinds=["output"])
                                            if e["payload"]["text"].startswith("orphan ")), None), what="orphan")
            runner = runner_pid(c, sid)
        orphan = int(line.split()[1])
        groups = _groups(orphan)
        assert groups["pids"].parent.name.startswith("labd-")
        d.kill9()
        os.killpg(runner, signal.SIGKILL)
        wait_until(lambda: not alive(runner), what="runner gone")
        assert alive(orphan)
        with _next_daemon(d, leftover=orphan, LABD_CGROUP_STRAY_S="1") as again, again.client() as c:
            wait_until(lambda: c.session(sid)["status"] == "lost", what="session found lost")
            wait_until(lambda: not alive(orphan) and not any(g.exists() for g in groups.values()), timeout=30,
                       what="the orphan killed and its group removed")


@pytest.mark.parametrize("ends_by", ["resume", "hunt"])
def test_the_burial_of_a_run_without_a_group_leaves_the_resumed_runs_group_alone(tmp_path: Path,
                                                                                    ends_by: str) -> None:
    """A run that had no group of this daemon's (adopted from a daemon that made none, or its group could not be
    made) is buried, and the session is resumed into a new group meanwhile. The burial's end, by the resumed
    runner's watch or by its last hunt between the resume's launch and that watch, releases nothing: it used to
    release "the session's current group", which by then was the resumed run's, killing its runner."""
    import subprocess
    import time

    from labd.daemon.burial import Burials
    from labd.daemon.cgroups import SessionCgroups, detect
    from labd.daemon.limits import Limits
    from labd.daemon.watched import Watched

    hierarchies, said = detect(tmp_path / "home")
    assert hierarchies, said
    cg = SessionCgroups(hierarchies, 64, _NoWarnings())
    burials = Burials(cg)
    run = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    try:
        run[0].kill()
        run[0].wait()
        burials.bury(Watched("s1", run[0].pid, Limits(), time.time()))  # the last run: no group
        joins, _ = cg.create("s1", None)  # the resume's launch
        assert joins
        for procs in joins:
            Path(procs).write_text(str(run[1].pid))
        if ends_by == "resume":
            burials.resumed("s1", run[1].pid)
        else:
            (b,) = burials.pending()
            burials.hunt(b, [], b.until)
        assert run[1].poll() is None, "the resumed runner was killed"
        assert cg.has("s1") and cg.members("s1") == {run[1].pid}
    finally:
        for p in run:
            p.kill()
            p.wait()
        cg.release("s1")
        cg.close()


def test_kill_then_resume_of_a_runner_adopted_without_a_group_keeps_the_resumed_runner(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner started by a daemon that made no groups (``cgroups = "off"``; or a labd from before them) is adopted
    by a daemon that makes them; ``labd kill S; labd resume S`` at once: the resumed runner, in a group of its own,
    runs on. The ended run had no group, and the end of its burial (cut short by the resumed runner's watch) released
    "the session's current group", the resumed runner's: it was killed at once and the session ended again."""
    with module_daemon_on(request, CONFIG.replace("[daemon]\n", '[daemon]\ncgroups = "off"\n')) as d:
        with pointed_at(d, monkeypatch).client() as c:
            sid = c.start("labd_testflows:leave_stubborn_then_wait", params={"seconds": 120})
            stubborn = int(wait_until(lambda: next((e["payload"]["text"].split()[1] for e in c.history(
                sid, kinds=["output"]) if e["payload"]["text"].startswith("stubborn ")), None), timeout=60,
                what="the stubborn child"))
            wait_until(lambda: any(s["name"] == "wait" and s["status"] == "running" for s in c.session(sid)["steps"]),
                       timeout=60, what="step wait running")
            runner = runner_pid(c, sid)
        assert not _groups(runner)["memory"].parent.name.startswith("labd-")  # no group of a daemon's
        d.kill9()
        try:
            with _next_daemon(d, leftover=runner, LABD_CGROUPS="auto") as again, again.client() as c:
                wait_until(lambda: sid in c.status()["running"], timeout=60, what="adopted")
                wait_until(lambda: ((c.session(sid).get("live") or {}).get("num_procs") or 0) >= 2, timeout=30,
                           what="the adopted runner's tree seen by the monitor")  # its leftover is known to it
                c.kill(sid)
                c.resume(sid)  # at once: the stubborn child (ignores SIGTERM) is still in its 2 s burial
                row = wait_until(lambda: (s := c.session(sid))["pid"] not in (None, 0, runner)
                                 and s["status"] in ("running", *TERMINAL_STATUSES) and s, timeout=60,
                                 what="the resumed session running (or ended)")
                assert row["status"] == "running", " | ".join(f"{e['kind']} {e['payload']}" for e in c.history(sid))
                pid = row["pid"]
                assert _groups(pid)["memory"].parent.name.startswith("labd-")  # in a group of its own
                wait_until(lambda: not alive(stubborn), timeout=30, what="the last run's leftover killed")
                assert alive(pid) and c.session(sid)["status"] == "running", c.session(sid)
                c.stop(sid, grace=1)
                assert c.wait(sid, timeout=30)["status"] == "cancelled"
        finally:
            if alive(stubborn):
                os.kill(stubborn, signal.SIGKILL)


def test_a_launched_runner_still_in_another_sessions_group_keeps_its_own(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's watch of a runner just launched must not take the group the runner is in *at that moment* for
    its session's: a spare that waited in another session's group (its memory limit could not be set there, so a
    fork ran that session) runs the next one, whose group it joins only once it has read its spec. Taken, the group
    made for the session was owned by nobody, and swept as a stray (killing the runner in it) while the other
    session's end killed the group the watch had named."""
    import subprocess

    import labd.daemon.cgroups as cgroups
    from labd.daemon.cgroups import SessionCgroups, detect

    monkeypatch.setattr(cgroups, "STRAY_GRACE_S", 0.0)
    hierarchies, said = detect(tmp_path / "home")
    assert hierarchies, said
    cg = SessionCgroups(hierarchies, 64, _NoWarnings())
    other, _ = cg.create("s2", None)  # the group a spare waits in (the session a fork ran)
    cg.make_ahead()
    mine, _ = cg.create("s3", None)  # the group made for the session the spare runs
    spare = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert other and mine and other != mine
        for procs in other:
            Path(procs).write_text(str(spare.pid))
        cg.adopt("s3", spare.pid)  # the watch, before the spare has joined its session's group
        for procs in mine:  # the runner's first act
            Path(procs).write_text(str(spare.pid))
        assert cg.group_of("s3") == Path(mine[0]).parent.name
        cg.sweep()
        cg.sweep()
        assert spare.poll() is None, "the runner was killed as a stray"
        assert cg.members("s3") == {spare.pid}
    finally:
        spare.kill()
        spare.wait()
        cg.release("s2")
        cg.release("s3")
        cg.close()


def test_a_runner_gone_before_its_watch_has_its_group_released(tmp_path: Path) -> None:
    """A runner that ended before the monitor's watch of it began (a start that failed at once, on a loaded box) is
    never watched, so never unwatched and buried: its group stayed the session's for good, and what the runner left
    in it lived on. Its watch now buries it at once: the group is released, and what is in it killed."""
    import subprocess
    import time

    from labd.daemon.cgroups import SessionCgroups, detect
    from labd.daemon.limits import Limits
    from labd.daemon.monitor import Monitor
    from tests.unit.test_breach_sample import _Socket

    hierarchies, said = detect(tmp_path / "home")
    assert hierarchies, said
    cg = SessionCgroups(hierarchies, 64, _NoWarnings())
    monitor = Monitor(None, sample_interval=0.1, record_interval=1.0, cgroups=cg)  # type: ignore[arg-type]
    monitor.notes, monitor.out = _Socket(), _Socket()  # type: ignore[assignment]
    joins, _ = cg.create("s1", None)
    runner = subprocess.Popen(["true"])
    runner.wait()  # ended (and reaped) before its watch
    left = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert joins
        for procs in joins:
            Path(procs).write_text(str(left.pid))
        monitor.watch("s1", runner.pid, Limits(), time.time())
        assert monitor.snapshot_of("s1") is None
        wait_until(lambda: (monitor._pass([], time.monotonic(), record=False), not cg.has("s1"))[1],  # noqa: SLF001
                   timeout=30, what="the burial over and the group released")
        assert left.wait(10) == -signal.SIGKILL
    finally:
        left.kill()
        left.wait()
        cg.release("s1")
        cg.close()
