"""Daemon restarts: runners outlive a killed daemon and are re-adopted with no gap and no duplicate."""

from __future__ import annotations

import os
import signal

from tests.conftest import DaemonProc, wait_until


def _assert_exactly_once(events: list[dict]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "store seq has a gap or duplicate"
    runner_seqs = [e for e in events if e["src"] == "runner"]
    assert runner_seqs, "no runner events"


def test_kill_9_of_the_daemon_mid_run_then_restart_finishes_gap_free(daemon) -> None:
    """A SIGKILLed daemon leaves its sessions running; a new daemon adopts them, their events continue,
    and the stored history has every runner event exactly once."""
    n = 60
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": n, "delay": 0.05})
        wait_until(lambda: len([e for e in c.history(sid) if e["kind"] == "custom"]) >= 5, what="ticks")
        pid = c.session(sid)["pid"]
    daemon.kill9()
    os.kill(pid, 0)  # the runner is still alive without a daemon
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final = c.wait(sid, timeout=60)
            assert final["status"] == "completed", final
            events = list(c.history(sid))
            _assert_exactly_once(events)
            ticks = [e["payload"]["data"]["i"] for e in events if e["kind"] == "custom"]
            assert ticks == list(range(n)), "tick events lost or duplicated across the restart"
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
    wait_until(lambda: not _alive(pid), what="runner gone")
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final = wait_until(lambda: (s := c.session(sid))["status"] == "lost" and s)
            assert "vanished without reporting an outcome" in final["reason"]
            assert final["ended_by"] == "vanished"
    finally:
        restarted.stop()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_stops_the_daemon_cleanly_but_not_the_sessions(daemon) -> None:
    """SIGTERM stops the daemon (exit 0, connection file removed); sessions keep running for the next one."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"])
    assert daemon.stop() == 0
    assert not (daemon.home / "connection.json").exists()
    assert _alive(pid)
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            assert c.session(sid)["status"] == "running"
            c.stop(sid, grace=1)
            assert c.wait(sid, timeout=30)["status"] == "cancelled"
    finally:
        restarted.stop()


def test_second_daemon_on_the_same_home_refuses_to_start(daemon) -> None:
    """A second daemon on a home that is already served exits with a clear message; the first keeps serving."""
    second = DaemonProc(daemon.home).start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    second.stop()
    assert "already serving home" in second.log()
    with daemon.client() as c:
        assert c.ping()["pid"] == daemon.proc.pid
