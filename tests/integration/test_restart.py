"""Daemon restarts: runners outlive a killed daemon and are re-adopted with no gap and no duplicate."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from labd.ipc.paths import layout_for
from tests.conftest import DaemonProc, alive, next_daemon_adopts_and_stops, wait_until


def _assert_exactly_once(events: list[dict]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "store seq has a gap or duplicate"
    runner_seqs = [e for e in events if e["src"] == "runner"]
    assert runner_seqs, "no runner events"


def _ticking_then_daemon_killed(daemon: DaemonProc, n: int) -> tuple[str, int]:
    """A ticker session (``n`` ticks, 50 ms apart) a few ticks in, then the daemon SIGKILLed: (id, runner pid)."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": n, "delay": 0.05})
        wait_until(lambda: len([e for e in c.history(sid) if e["kind"] == "custom"]) >= 5, what="ticks")
        pid = c.session(sid)["pid"]
    daemon.kill9()
    return sid, pid


def _completed_with_every_tick_once(c: Any, sid: str, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Wait for the ticker session to complete; each of its ``n`` ticks recorded exactly once, in order."""
    final = c.wait(sid, timeout=60)
    assert final["status"] == "completed", final
    events = list(c.history(sid))
    ticks = [e["payload"]["data"]["i"] for e in events if e["kind"] == "custom"]
    assert ticks == list(range(n)), "ticks lost or duplicated (across the restart, or by a second runner)"
    return final, events


def _restart_while_held(daemon: DaemonProc, pid: int, edit: Callable[[sqlite3.Connection], Any]) -> DaemonProc:
    """With runner ``pid`` held stopped (it must still be there when the next daemon starts, however slow the box),
    ``edit`` the dead daemon's store (as a crash or a clock step would leave it), start a new daemon on the home,
    then let the runner go on (if it is gone, the caller's assertions say why)."""
    os.kill(pid, signal.SIGSTOP)
    with sqlite3.connect(daemon.home / "labd.db") as conn:
        edit(conn)
    try:
        return DaemonProc(daemon.home).start()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_kill_9_of_the_daemon_mid_run_then_restart_finishes_gap_free(daemon) -> None:
    """A SIGKILLed daemon leaves its sessions running; a new daemon adopts them, their events continue,
    and the stored history has every runner event exactly once."""
    n = 60
    sid, pid = _ticking_then_daemon_killed(daemon, n)
    os.kill(pid, 0)  # the runner is still alive without a daemon
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final, events = _completed_with_every_tick_once(c, sid, n)
            _assert_exactly_once(events)
            lines = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
            assert lines == "".join(f"tick {i}\n" for i in range(n))
            # Adopted while still running, or (it can finish while the new daemon starts: ingest binds the
            # runner socket before adoption runs) ended with its own outcome, not "lost".
            assert any(e["kind"] == "session.adopted" for e in events) or final["ended_by"] == "vanished"
    finally:
        restarted.stop()


def test_runner_that_vanished_while_the_daemon_was_down_is_marked_lost(daemon) -> None:
    """A runner that died (SIGKILL, no outcome reported) while no daemon was watching is marked lost, with
    the reason, at restart; its spool was read first, so what it had emitted is in the record."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
    daemon.kill9()
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), what="runner gone")
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final = wait_until(lambda: (s := c.session(sid))["status"] == "lost" and s)
            assert "vanished without reporting an outcome" in final["reason"]
            assert final["ended_by"] == "vanished"
    finally:
        restarted.stop()


def test_a_runner_is_adopted_after_the_clock_was_set(daemon) -> None:
    """The wall clock stepped (NTP) while the daemon was down: psutil derives a process's create time from the boot
    time, which the kernel computes from the wall clock, so the recorded create time no longer matches the live
    runner's (here it is moved by 2 s in the store, as a step would). The runner still carries its session's title:
    the new daemon adopts it, and the session completes with every tick once. Before, it was taken for a reused pid
    and recorded ended while it ran on unsupervised."""
    n = 60
    sid, pid = _ticking_then_daemon_killed(daemon, n)
    restarted = _restart_while_held(daemon, pid, lambda conn: conn.execute(
        "UPDATE sessions SET pid_create_time = pid_create_time + 2 WHERE id = ?", (sid,)))
    try:
        with restarted.client() as c:
            _completed_with_every_tick_once(c, sid, n)
            assert any(e["kind"] == "session.adopted" for e in c.history(sid))
        assert "adopted by its title" in restarted.log()
    finally:
        restarted.stop()


@pytest.mark.parametrize("status", ["created", "queued"])
def test_runner_forked_but_never_recorded_is_adopted_not_lost_or_run_twice(daemon, status: str) -> None:
    """A daemon that dies after forking a runner but before ``session.launched`` is committed leaves a session
    stored as ``created`` (or ``queued``, under a full run queue) with no pid. The next daemon finds the runner
    by its process title and adopts it: the session completes with every tick exactly once: not ``lost``
    while it still runs, and a queued one is not started a second time. (The crash window is a few
    milliseconds, so the test SIGKILLs the daemon mid-run and puts the row back as that crash leaves it.)"""
    n = 80
    sid, pid = _ticking_then_daemon_killed(daemon, n)
    assert f"#{sid}" in " ".join(psutil.Process(pid).cmdline())  # the title names the session
    restarted = _restart_while_held(daemon, pid, lambda conn: conn.execute(
        "UPDATE sessions SET pid = NULL, pid_create_time = NULL, status = ? WHERE id = ?", (status, sid)))
    try:
        with restarted.client() as c:
            final, events = _completed_with_every_tick_once(c, sid, n)
            launched = [e["payload"] for e in events if e["kind"] == "session.launched"]
            assert {p["pid"] for p in launched} == {pid}, "a second runner was launched"
            assert launched[-1].get("recovered") is True
            assert any(e["kind"] == "session.adopted" for e in events) or final["ended_by"] == "vanished"
    finally:
        restarted.stop()


def test_runner_of_a_session_never_recorded_is_stopped(daemon) -> None:
    """A daemon that dies after handing a runner its spec but before ``session.created`` is committed leaves a
    runner the store has no trace of (and whose client got no reply). The next daemon kills it rather than let
    it run its workflow unrecorded and unsupervised, and removes its directory. (Simulated: the daemon is
    SIGKILLed mid-run and every row of the session deleted, as if it had never been committed.)"""
    sid, pid = _ticking_then_daemon_killed(daemon, 2000)  # 100 s: it would outlive the test

    def forget(conn: sqlite3.Connection) -> None:  # every row of the session, as if it had never been committed
        conn.execute("PRAGMA foreign_keys = OFF")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if "session_id" in columns:
                conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (sid,))
        conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    restarted = _restart_while_held(daemon, pid, forget)
    try:
        wait_until(lambda: not alive(pid), timeout=30, what="the stray runner to be killed")
        # the start-up sweep removes unknown sessions' directories on a thread of its own: on a busy box the
        # daemon can answer before it is done
        wait_until(lambda: not (daemon.home / "sessions" / sid).exists(), timeout=30,
                   what="the stray session's directory to be removed")
        with restarted.client() as c:
            assert sid not in {s["id"] for s in c.sessions(limit=1000)}
    finally:
        restarted.stop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # if the test failed: not 100 s of ticking after it


def test_sigterm_stops_the_daemon_cleanly_but_not_the_sessions(daemon) -> None:
    """SIGTERM stops the daemon (exit 0, connection file removed); sessions keep running for the next one."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
    assert daemon.stop() == 0
    assert not (daemon.home / "connection.json").exists()
    assert alive(pid)
    next_daemon_adopts_and_stops(daemon.home, sid, pid)


def test_sighup_stops_the_daemon_cleanly_without_draining(isolated_env) -> None:
    """SIGHUP (the terminal of a `labd serve &` closed; a log rotation's signal) stops the daemon as SIGTERM does:
    exit 0, a log line naming SIGHUP, the connection file removed, the sessions running on for the next daemon;
    and even a ``--drain`` daemon does not stop its sessions for a hangup. Before, SIGHUP killed the daemon with
    no word in its log and left its connection file behind."""
    d = DaemonProc(isolated_env, args=["--drain"]).start()
    try:
        with d.client() as c:
            sid = c.start("demo.sleep", params={"seconds": 60})
            pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
    assert "SIGHUP" in d.log() and "stopping daemon" in d.log()
    assert not layout_for(isolated_env).connection_file.exists()
    assert alive(pid)
    next_daemon_adopts_and_stops(isolated_env, sid, pid)


def test_a_daemon_stopped_with_sessions_running_leaves_its_template_to_outlive_them(daemon) -> None:
    """Stopped while a session runs, the daemon does not wait for the runner template to exit (it never does
    while it has runners) and does not kill it: the template stays, the runner's parent, so the runner's process
    group is not orphaned (a stopped member would get SIGHUP), and ends once its last runner has ended. Before,
    the daemon waited 5 s at every such stop and then SIGKILLed the template."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
        template = c.status()["template_pid"]
    assert psutil.Process(pid).ppid() == template
    assert daemon.stop() == 0
    tmpl = psutil.Process(template)
    assert tmpl.is_running() and tmpl.status() != psutil.STATUS_ZOMBIE
    assert "waiting for its runners" in " ".join(tmpl.cmdline())
    assert psutil.Process(pid).ppid() == template
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not alive(template), timeout=20, what="the template to exit after its last runner")


def test_second_daemon_on_the_same_home_refuses_to_start(daemon) -> None:
    """A second daemon on a home that is already served exits with a clear message; the first keeps serving."""
    second = DaemonProc(daemon.home).start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    second.stop()
    assert "already serving home" in second.log()
    with daemon.client() as c:
        assert c.ping()["pid"] == daemon.proc.pid


def test_show_does_not_say_no_daemon_watched_an_adopted_runner_that_ended(daemon) -> None:
    """An adopted runner that ends under the new daemon ends `vanished` (not the daemon's child: no exit status);
    `labd show` says so without claiming it ended "while no daemon watched it" (it said that, with the new daemon
    watching it all along)."""
    from tests.integration.cli_support import labd

    sid, _ = _ticking_then_daemon_killed(daemon, 120)
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            wait_until(lambda: any(e["kind"] == "session.adopted" for e in c.history(sid)), timeout=30,
                       what="the adoption")
            final = c.wait(sid, timeout=60)
            assert final["status"] == "completed" and final["ended_by"] == "vanished", final
        shown = labd("--home", str(daemon.home), "show", sid)
        assert shown.returncode == 0, shown.stderr
        ended = next(line for line in shown.stdout.splitlines() if line.startswith("ended by"))
        assert "no daemon watched" not in ended and "adopted" in ended, ended
    finally:
        restarted.stop()
