"""The run queue: capacity (max_sessions), order (priority, then submission), restart, stop while queued."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, kill_runners, running_daemon, wait_until


def _configure(home: Path, max_sessions: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"[daemon]\nmax_sessions = {max_sessions}\n")


def _ts(client: Any, sid: str, kind: str) -> float | None:
    found = [e["ts"] for e in client.history(sid, kinds=[kind])]
    return found[0] if found else None


def _start(client: Any, workflow: str = "demo.sleep", seconds: float = 60, priority: int = 0) -> str:
    return client.request("session.start", workflow=workflow, params={"seconds": seconds}, limits={},
                          priority=priority)["session"]  # type: ignore[no-any-return]


def _positions(client: Any) -> dict[str, int]:
    """Queued sessions -> their queue position, as session.list reports them."""
    return {r["id"]: r["queue_position"] for r in client.sessions(status=["queued"])}


def _status(client: Any, sid: str) -> str:
    return client.session(sid)["status"]  # type: ignore[no-any-return]


def _running_blocker(client: Any) -> str:
    """A long session started and seen running: it holds the only slot under max_sessions = 1."""
    sid = _start(client)
    wait_until(lambda: _status(client, sid) == "running", timeout=30, what="blocker running")
    return sid


def test_fifty_submissions_under_max_sessions_four(isolated_env: Path) -> None:
    """50 sessions under max_sessions = 4: never more than 4 runners at once, all complete, and they
    are launched in submission order."""
    _configure(isolated_env, 4)
    with running_daemon(isolated_env) as d, d.client(timeout=30) as c:
        sids = [_start(c, seconds=1.0) for _ in range(50)]
        for sid in sids:
            assert c.wait(sid, timeout=300)["status"] == "completed"
        spans = [(_ts(c, s, "session.launched"), _ts(c, s, "session.ended")) for s in sids]
        waited = sum(_ts(c, s, "session.queued") is not None for s in sids)
    assert waited >= 30, f"only {waited} of 50 sessions waited in the queue"
    assert all(a is not None and b is not None for a, b in spans)
    launched = [a for a, _ in spans]
    assert launched == sorted(launched), "sessions were launched out of submission order"
    # the most runners alive at any launch instant (a runner counts from its launch to its recorded end)
    overlap = max(sum(1 for a, b in spans if a <= t < b) for t in launched)  # type: ignore[operator]
    assert overlap <= 4, f"{overlap} sessions ran at once under max_sessions = 4"


def test_priority_then_submission_order_and_ps_shows_the_queue(isolated_env: Path) -> None:
    """Queued sessions start highest priority first, then in submission order; session.list reports
    status queued with the queue position and priority, and `labd ps` lists them with both (`queued #1 prio 5`)."""
    _configure(isolated_env, 1)
    with running_daemon(isolated_env) as d, d.client() as c:
        blocker = _start(c)
        wait_until(lambda: _status(c, blocker) == "running", timeout=30, what="blocker running")
        low_a, low_b = _start(c, seconds=0.1), _start(c, seconds=0.1)
        high = _start(c, seconds=0.1, priority=5)
        expected = {high: 1, low_a: 2, low_b: 3}
        wait_until(lambda: _positions(c) == expected, what=f"queue positions {expected} (is {_positions(c)})")
        ps = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "ps"], capture_output=True,
                            text=True, check=True).stdout
        assert ps.count("queued") == 3, ps
        assert "queued #1 prio 5" in ps and "queued #2" in ps and "queued #3" in ps, ps  # place and priority shown
        assert {r["id"]: r["queue_priority"] for r in c.sessions(status=["queued"])} == {high: 5, low_a: 0, low_b: 0}
        c.stop(blocker, grace=1)
        for sid in (high, low_a, low_b):
            assert c.wait(sid, timeout=60)["status"] == "completed"
        order = sorted((high, low_a, low_b), key=lambda s: _ts(c, s, "session.launched") or 0)
    assert order == [high, low_a, low_b]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_queued_session_can_be_stopped(isolated_env: Path, how: str) -> None:
    """Stopping (or killing) a queued session ends it cancelled, and no runner is ever started for it."""
    _configure(isolated_env, 1)
    with running_daemon(isolated_env) as d, d.client() as c:
        blocker = _start(c)
        waiting = _start(c, seconds=0.1)
        wait_until(lambda: _status(c, waiting) == "queued", what="queued")
        getattr(c, how)(waiting)
        final = c.wait(waiting, timeout=30)
        assert final["status"] == "cancelled" and final["ended_by"] == "queue"
        assert final["pid"] is None
        assert _ts(c, waiting, "session.launched") is None
        c.stop(blocker, grace=1)
        c.wait(blocker, timeout=30)
        assert _ts(c, waiting, "session.launched") is None  # freed capacity does not revive it


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_queued_session_stopped_then_resumed_at_once_is_continued(isolated_env: Path, how: str) -> None:
    """The reply to stopping a queued session comes once its end is recorded: a resume sent right after it continues
    the session (an exploratory test: the resume read it still queued and was refused, 14 times in 20)."""
    _configure(isolated_env, 1)
    with running_daemon(isolated_env) as d, d.client() as c:
        blocker = _start(c)
        for _ in range(5):
            waiting = _start(c, seconds=0.1)
            wait_until(lambda w=waiting: _status(c, w) == "queued", what="queued")
            assert getattr(c, how)(waiting)["was_queued"] is True
            assert c.resume(waiting, reason="at once")["session"] == waiting  # nothing in between
            assert _status(c, waiting) == "queued"  # continued, and waiting for the slot again
            assert [e["payload"]["from_status"] for e in c.history(waiting, kinds=["session.continued"])] == \
                ["cancelled"]
            c.stop(waiting)
        c.stop(blocker, grace=1)
        c.wait(blocker, timeout=30)


def test_kill_then_resume_at_once_continues_the_session(isolated_env: Path) -> None:
    """``labd kill S; labd resume S``: the resume reaches the daemon while the runner is still being killed; the
    daemon says so (``stopping``) rather than take it for an un-pause ("not paused", and nothing happened), and the
    SDK's resume waits for the end and continues the session with a new runner."""
    from labd.ipc import LabdError

    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:stubborn")  # ignores SIGTERM: a stop takes its whole grace
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"], what="running")
        c.stop(sid, grace=3)
        with pytest.raises(LabdError) as refused:
            c.request("session.resume", session=sid)
        assert refused.value.code == "stopping"
        c.resume(sid)  # waits for the end, then continues it
        again = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"], timeout=60,
                           what="the resumed session running")
        assert again != pid
        assert [e["payload"]["from_status"] for e in c.history(sid, kinds=["session.continued"])] == ["cancelled"]
        c.kill(sid)
        c.wait(sid, timeout=30)


def test_resume_of_a_session_whose_stop_outlasts_the_wait_says_so(isolated_env: Path) -> None:
    """The SDK's resume of a session being stopped waits for its end at most ``stop_wait`` seconds (the dashboard's
    resume button held a request slot for as long as a stop's grace, up to an hour): past it, ``stopping`` saying
    so, and nothing resumed; once the session has ended a resume continues it."""
    from labd.ipc import LabdError

    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:stubborn")  # ignores SIGTERM: a stop takes its whole grace
        wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"], what="running")
        c.stop(sid, grace=30)
        with pytest.raises(LabdError) as refused:
            c.resume(sid, stop_wait=0.5)
        assert refused.value.code == "stopping" and "still being stopped after 0.5 s" in refused.value.message
        assert list(c.history(sid, kinds=["session.continued"])) == []
        c.kill(sid)
        c.wait(sid, timeout=30)
        c.resume(sid)
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="the resumed session running")
        c.kill(sid)
        c.wait(sid, timeout=30)


def test_the_queue_survives_a_daemon_restart(isolated_env: Path) -> None:
    """Sessions queued when the daemon stops are still queued, in the same order, after it restarts (the
    adopted blocker still holds the only slot), and run in that order once capacity frees."""
    _configure(isolated_env, 1)
    first = DaemonProc(isolated_env).start()
    try:
        with first.client() as c:
            blocker = _running_blocker(c)
            queued = [_start(c, seconds=0.1), _start(c, seconds=0.1, priority=2), _start(c, seconds=0.1)]
            before = wait_until(lambda: _positions(c) if len(_positions(c)) == 3 else None, what="three queued")
        first.stop()  # sessions keep running: the blocker's runner outlives the daemon
        with running_daemon(isolated_env) as d, d.client() as c:
            after = _positions(c)
            assert after == before == {queued[1]: 1, queued[0]: 2, queued[2]: 3}
            assert _status(c, blocker) == "running"
            c.stop(blocker, grace=1)
            for sid in queued:
                assert c.wait(sid, timeout=60)["status"] == "completed"
            order = sorted(queued, key=lambda s: _ts(c, s, "session.launched") or 0)
    finally:
        first.stop()
        kill_runners(isolated_env)
    assert order == [queued[1], queued[0], queued[2]]


def test_a_resumed_session_keeps_its_place_in_the_queue_across_a_restart(isolated_env: Path) -> None:
    """A session first queued with priority 5 fails; resumed later (keeping its priority) it queues behind two
    sessions of the same priority submitted before the resume. After a daemon restart it is still behind them: the
    queue is rebuilt from each session's last submission, not its first (which put it first)."""
    _configure(isolated_env, 1)
    first = DaemonProc(isolated_env).start()
    try:
        with first.client() as c:
            blocker = _running_blocker(c)
            old = c.request("session.start", workflow="demo.fail", params={}, limits={}, priority=5)["session"]
            wait_until(lambda: _status(c, old) == "queued", timeout=30, what="old queued")
            c.stop(blocker, grace=1)
            assert c.wait(old, timeout=60)["status"] == "failed"
            _running_blocker(c)
            a, b = _start(c, seconds=0.1, priority=5), _start(c, seconds=0.1, priority=5)
            c.resume(old)
            before = wait_until(lambda: _positions(c) if len(_positions(c)) == 3 else None, what="three queued")
            assert before == {a: 1, b: 2, old: 3}
        first.stop()
        with running_daemon(isolated_env) as d, d.client() as c:
            assert _positions(c) == before
    finally:
        first.stop()
        kill_runners(isolated_env)


def test_resumes_and_branches_keep_the_sessions_priority(isolated_env: Path) -> None:
    """A session started with priority 10, resumed (or branched) while the queue is full, queues ahead of sessions of
    priority 5 submitted before: it keeps its priority. Before, resumes and branches were queued at 0, behind
    everything (crash review)."""
    _configure(isolated_env, 1)
    with running_daemon(isolated_env) as d, d.client() as c:
        old = c.request("session.start", workflow="labd_testflows:ticker", params={"n": 2, "delay": 0.01},
                        limits={}, priority=10)["session"]
        failed = c.request("session.start", workflow="demo.fail", params={}, limits={}, priority=10)["session"]
        assert c.wait(old, timeout=60)["status"] == "completed"
        assert c.wait(failed, timeout=60)["status"] == "failed"
        _running_blocker(c)
        a, b = _start(c, seconds=0.1, priority=5), _start(c, seconds=0.1, priority=5)
        wait_until(lambda: len(_positions(c)) == 2, what="two queued")
        kid = c.branch(old, "tick 1")["sessions"][0]["session"]
        wait_until(lambda: len(_positions(c)) == 3, what="the branch queued")
        c.resume(failed)
        positions = wait_until(lambda: _positions(c) if len(_positions(c)) == 4 else None, what="the resume queued")
        assert positions == {kid: 1, failed: 2, a: 3, b: 4}
        priorities = {r["id"]: r["queue_priority"] for r in c.sessions(status=["queued"])}
        assert (priorities[kid], priorities[failed]) == (10, 10)
    kill_runners(isolated_env)


def test_labd_stop_of_a_queued_session_says_it_never_ran(isolated_env: Path) -> None:
    """`labd stop` of a queued session says it was taken off the queue (it said "forced after 5s", which reads as
    a running session being killed)."""
    from tests.integration.cli_support import labd

    _configure(isolated_env, 1)
    with running_daemon(isolated_env) as d, d.client() as c:
        blocker = _start(c)
        waiting = _start(c, seconds=0.1)
        wait_until(lambda: _status(c, waiting) == "queued", what="queued")
        out = labd("stop", waiting)
        assert out.returncode == 0 and f"{waiting} taken off the queue" in out.stdout and "forced" not in out.stdout
        running = labd("stop", blocker)
        assert f"stopping {blocker} (forced after" in running.stdout


def test_labd_run_says_when_its_session_is_queued(isolated_env: Path) -> None:
    """`labd run` of a session that waits in the run queue says so on stderr with its place (it printed only the
    id, and `--follow` printed its header then nothing until the session started); its stdout is still the id
    alone, for scripts. A session that starts at once gets no such line."""
    from tests.integration.cli_support import labd

    _configure(isolated_env, 1)
    with running_daemon(isolated_env) as d, d.client() as c:
        first = labd("run", "demo.sleep", "-p", "seconds=60")
        assert first.returncode == 0 and "queued" not in first.stderr, first.stderr
        blocker = first.stdout.strip()
        wait_until(lambda: _status(c, blocker) == "running", what="the blocker running")
        queued = labd("run", "demo.count", "-p", "n=1", "-p", "delay=0")
        sid = queued.stdout.strip()
        assert queued.returncode == 0 and len(sid) == 12, queued
        assert f"session {sid} is queued (#1)" in queued.stderr, queued.stderr
        # `labd logs -f` of it says so too (it printed nothing until the session started: power-user review)
        follower = subprocess.Popen([sys.executable, "-m", "labd", "logs", "-f", sid], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            assert follower.stderr is not None
            assert f"session {sid} is queued (#1)" in follower.stderr.readline()
        finally:
            c.stop(blocker, grace=1)
            assert c.wait(sid, timeout=60)["status"] == "completed"
            follower.wait(60)
