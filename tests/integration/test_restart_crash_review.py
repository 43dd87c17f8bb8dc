"""A daemon killed at the wrong moment (crash review): a runner that ran and ended while no daemon watched it, its
launch never stored, is recorded from its spool with its own outcome (not ``lost``, not run a second time), and a
stop the killed daemon had begun is carried on by the next one."""

from __future__ import annotations

import os
import signal
import sqlite3

import orjson
import pytest

from labd.ipc.client import Client
from labd.runner.spool import read_spool, spool_path
from tests.conftest import DaemonProc, alive, wait_until

N = 20


def _ran_unwatched(daemon: DaemonProc) -> tuple[str, int]:
    """A ticker session whose daemon is SIGKILLed a few ticks in; its runner finishes with no daemon (every event
    from then on only in its spool) and is then killed, as one that gave up waiting for a daemon ends. (id, pid)"""
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": N, "delay": 0.05})
        wait_until(lambda: len(list(c.history(sid, kinds=["custom"]))) >= 3, timeout=60, what="first ticks")
        pid = c.session(sid)["pid"]
    daemon.kill9()
    spool = spool_path(daemon.home / "sessions" / sid)

    def finished() -> bool:
        return any(orjson.loads(body)[2] == "session.finished" for _seq, body in read_spool(spool))
    wait_until(finished, timeout=60, what="the workflow finished into its spool")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid),
               timeout=30, what="the runner gone")
    return sid, pid


@pytest.mark.parametrize("status", ["created", "queued"])
def test_a_runner_that_ran_unrecorded_and_ended_keeps_its_outcome_and_is_not_run_again(daemon, status: str) -> None:
    """The last daemon died before storing a session's launch (its row ``created``, or ``queued`` under a full run
    queue, with no pid), and its runner ran to the end and exited while no daemon watched. The next daemon ends the
    session from the runner's spool: ``completed``, every tick once, one launch. Before, a ``created`` one was
    recorded ``lost`` though its record said it completed, and a ``queued`` one ran a second time (its first run's
    events never stored)."""
    sid, _pid = _ran_unwatched(daemon)
    with sqlite3.connect(daemon.home / "labd.db") as conn:
        conn.execute("UPDATE sessions SET pid = NULL, pid_create_time = NULL, status = ? WHERE id = ?", (status, sid))
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final = c.wait(sid, timeout=60)
            events = list(c.history(sid))
        assert final["status"] == "completed", final
        assert [e["payload"]["data"]["i"] for e in events if e["kind"] == "custom"] == list(range(N))
        assert len([e for e in events if e["kind"] == "session.launched"]) == 1, "a second runner was launched"
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    finally:
        restarted.stop()


def test_a_stop_the_killed_daemon_began_is_carried_on(daemon) -> None:
    """``labd stop`` of a session that ignores the cooperative cancel and SIGTERM, then the daemon SIGKILLed before
    the ladder got further: the next daemon adopts the runner and carries the stop on (cancel, SIGTERM, SIGKILL),
    the grace counted from when it was asked; the session ends ``cancelled``, stopped by its client. Before, the stop
    was forgotten and the session ran on (for ever, here), holding its run-queue slot."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:stubborn")
        wait_until(lambda: "ignoring SIGTERM" in "".join(e["payload"]["text"] for e in c.history(sid,
                                                                                             kinds=["output"])),
                   timeout=60, what="the session running")
        c.stop(sid, 2.0)
        wait_until(lambda: c.session(sid)["stop_by"], timeout=30, what="the stop recorded")
    daemon.kill9()
    restarted = DaemonProc(daemon.home).start()
    try:
        with restarted.client() as c:
            final = c.wait(sid, timeout=90)
            stops = [e["payload"] for e in c.history(sid, kinds=["session.stopping"])]
        assert final["status"] == "cancelled" and final["reason"].startswith("stopped by"), final
        assert stops[0]["grace"] == 2.0
        assert "stop carried on after a restart" in restarted.log()
    finally:
        restarted.stop()


def test_a_stop_past_its_sigterm_waits_out_the_rest_of_term_grace_after_a_restart(isolated_env) -> None:
    """A stop whose SIGTERM the killed daemon had already sent: that rung is recorded (``session.stopping`` step
    ``sigterm``), and the next daemon waits out the rest of ``term_grace`` and sends SIGKILL, without cancelling and
    sending SIGTERM again. Before, it started the ladder over: a second SIGTERM, and a whole ``term_grace`` more."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text("[daemon]\nterm_grace = 8.0\n")
    first = DaemonProc(isolated_env).start()

    def output(c: Client) -> str:
        return "".join(e["payload"]["text"] for e in c.history(sid, kinds=["output"]))

    with first.client() as c:
        sid = c.start("labd_testflows:counts_sigterms")
        wait_until(lambda: "counting SIGTERMs" in output(c), timeout=60, what="the session running")
        c.stop(sid, 0.5)
        wait_until(lambda: [e["payload"]["step"] for e in c.history(sid, kinds=["session.stopping"])]
                   == ["cooperative", "sigterm"], timeout=30, what="the SIGTERM rung recorded")
        wait_until(lambda: "sigterm 1" in output(c), timeout=30, what="the runner's SIGTERM")
    first.kill9()
    restarted = DaemonProc(isolated_env).start()
    try:
        with restarted.client() as c:
            final = c.wait(sid, timeout=60)
            assert final["status"] == "cancelled" and final["reason"] == "stopped by client (ended by SIGKILL)", final
            assert "sigterm 1" in output(c) and "sigterm 2" not in output(c)
            assert [e["payload"]["step"] for e in c.history(sid, kinds=["session.stopping"])] == \
                ["cooperative", "sigterm"]
        assert "stop carried on after a restart" in restarted.log()
    finally:
        restarted.stop()


def test_a_session_recorded_but_never_queued_runs_after_a_restart(isolated_env) -> None:
    """The daemon answered a start (``session.created`` stored) and was killed before it queued or launched the
    session: the row is ``created`` with no runner and no spool. The next daemon starts it (it waits its turn, and
    completes). Before, it was recorded ``lost`` ("no local runner to adopt") without ever running (crash retest:
    1 start in 15, and 2 of 3 branches, when killed at the wrong moment). Made deterministic by killing the daemon
    while the session waits in the queue and taking its ``session.queued`` out of the record, as that crash leaves
    it."""
    (isolated_env).mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text("[daemon]\nmax_sessions = 1\n")
    first = DaemonProc(isolated_env).start()
    with first.client() as c:
        blocker = c.start("demo.sleep", params={"seconds": 60})
        wait_until(lambda: c.session(blocker)["status"] == "running", timeout=60, what="the blocker running")
        waiting = c.start("labd_testflows:ticker", params={"n": 3, "delay": 0.01})
        wait_until(lambda: c.session(waiting)["status"] == "queued", timeout=30, what="queued")
    first.kill9()
    with sqlite3.connect(isolated_env / "labd.db") as conn:
        (seq,) = conn.execute("SELECT max(seq) FROM events WHERE session_id = ? AND kind = 'session.queued'",
                              (waiting,)).fetchone()
        assert seq == conn.execute("SELECT max(seq) FROM events WHERE session_id = ?", (waiting,)).fetchone()[0]
        conn.execute("DELETE FROM events WHERE session_id = ? AND seq = ?", (waiting, seq))
        conn.execute("DELETE FROM state_history WHERE session_id = ? AND seq = ?", (waiting, seq))
        conn.execute("UPDATE sessions SET status = 'created', last_seq = ? WHERE id = ?", (seq - 1, waiting))
    restarted = DaemonProc(isolated_env).start()
    try:
        with restarted.client() as c:
            c.stop(blocker, 1.0)
            final = c.wait(waiting, timeout=90)
            assert final["status"] == "completed", final
            assert [e["kind"] for e in c.history(waiting, kinds=["session.launched"])] == ["session.launched"]
    finally:
        restarted.stop()
