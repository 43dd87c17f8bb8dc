"""Adoption needs proof: a process that titles itself like a session's runner (``labd: ... #<id>``, which any
process of the user can do) is not adopted by a restarted daemon unless it signs with the session's key, and is
never signalled. Found by an attack review: such an impostor for a *queued* session made it never run while holding
a ``max_sessions`` slot (daemon/orphans.py, ``Claims``)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from labd.runner.title import runner_title, session_of_title
from tests.conftest import DaemonProc, alive, kill_runners, wait_until
from tests.integration.test_restart import _restart_while_held

_TITLED = ("import sys, time, setproctitle\n"
           "setproctitle.setproctitle(sys.argv[1])\n"
           "time.sleep(600)\n")


@contextlib.contextmanager
def _impostor(home: Path, sid: str) -> Iterator[subprocess.Popen[bytes]]:
    """A plain process of this user titled exactly like ``sid``'s runner, leading a process group of its own and
    standing in the session's directory (so ``belongs_here`` holds for it, as it would for a real runner)."""
    session_dir = home / "sessions" / sid
    proc = subprocess.Popen([sys.executable, "-c", _TITLED, runner_title("study", "demo.sleep", sid)],
                            cwd=session_dir if session_dir.is_dir() else home, start_new_session=True)
    try:
        wait_until(lambda: session_of_title(Path(f"/proc/{proc.pid}/cmdline").read_bytes()) == sid, timeout=30,
                   what="the impostor's title")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    """Still running (not exited, not killed: a zombie counts as gone)."""
    if proc.poll() is not None:
        return False
    try:
        return psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids(c: Any, sid: str, kind: str) -> set[int]:
    return {e["payload"].get("pid") for e in c.history(sid, kinds=[kind])}


def _queued_behind_a_blocker(home: Path) -> tuple[str, str]:
    """On a daemon with ``max_sessions = 1``: a running 120 s blocker and a session queued behind it; the daemon is
    then stopped (SIGTERM: the blocker runs on, the queued session waits in the store). Returns (blocker, queued)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[daemon]\nmax_sessions = 1\n")
    first = DaemonProc(home).start()
    try:
        with first.client() as c:
            blocker = c.start("demo.sleep", params={"seconds": 120})
            wait_until(lambda: c.session(blocker)["status"] == "running", timeout=30, what="the blocker running")
            queued = c.start("demo.sleep", params={"seconds": 0.2})
            wait_until(lambda: c.session(queued)["status"] == "queued", timeout=30, what="the session queued")
    finally:
        first.stop()
    return blocker, queued


def test_impostor_of_a_queued_session_does_not_keep_it_from_running(isolated_env: Path) -> None:
    """A session queued under ``max_sessions = 1`` when the daemon stopped, with a same-user process titled as its
    runner at the restart: the impostor is not adopted (no ``session.launched``/``session.adopted`` with its pid),
    the session is queued again once the impostor failed to prove itself, starts when the slot frees and completes;
    the impostor, although it stands in the session's directory, is not killed."""
    restarted = None
    try:
        blocker, queued = _queued_behind_a_blocker(isolated_env)
        with _impostor(isolated_env, queued) as imp:
            restarted = DaemonProc(isolated_env).start()
            with restarted.client() as c:
                assert c.session(blocker)["status"] == "running"
                c.kill(blocker)  # its slot frees: the queued session is next
                final = wait_until(lambda: (s := c.session(queued))["status"] in ("completed", "failed", "lost")
                                   and s, timeout=60, what="the queued session to run to its end")
                assert final["status"] == "completed", final
                assert imp.pid not in _pids(c, queued, "session.launched") | _pids(c, queued, "session.adopted")
                assert _alive(imp), "the impostor was killed: it never proved it is one of ours"
            assert "never proved it is one" in restarted.log()
    finally:
        if restarted is not None:
            restarted.stop()
        kill_runners(isolated_env)


@pytest.mark.parametrize("pid_recorded", [False, True], ids=["no-pid", "pid-recorded"])
def test_impostor_of_a_live_session_whose_runner_is_gone_is_not_adopted(daemon: DaemonProc,
                                                                        pid_recorded: bool) -> None:
    """A live session whose runner died while no daemon ran, and a same-user process titled as that runner at the
    restart: the session is recorded ``lost`` (as for any vanished runner), not adopted with the impostor's pid,
    and the impostor is not killed. Stored with no pid (the last daemon died before ``session.launched`` was
    committed), the title alone once made it adopted; with its pid recorded, the pid and its create time already
    tell the impostor apart."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 120})
        pid = wait_until(lambda: c.session(sid)["status"] == "running" and c.session(sid)["pid"], timeout=30,
                         what="the session running")
    daemon.kill9()
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid),
               timeout=30, what="the runner gone")
    if not pid_recorded:
        with sqlite3.connect(daemon.home / "labd.db") as conn:
            conn.execute("UPDATE sessions SET pid = NULL, pid_create_time = NULL, status = 'created' WHERE id = ?",
                         (sid,))
    with _impostor(daemon.home, sid) as imp:
        restarted = DaemonProc(daemon.home).start()
        try:
            with restarted.client() as c:
                final = wait_until(lambda: (s := c.session(sid))["status"] in ("lost", "completed", "failed")
                                   and s, timeout=60, what="the session to end")
                assert final["status"] == "lost", final
                assert imp.pid not in _pids(c, sid, "session.launched") | _pids(c, sid, "session.adopted")
                assert _alive(imp), "the impostor was killed: it never proved it is one of ours"
        finally:
            restarted.stop()


def test_a_stop_while_a_claimed_queued_session_awaits_its_runner_is_kept(isolated_env: Path) -> None:
    """A queued session claimed by a process titled as its runner (see above) and stopped by the user while the
    daemon waits for that process to prove itself: the stop is accepted (`awaiting_runner`), and when the proof
    does not come the session ends `cancelled` without ever running — before, the stop was refused
    `not_running` and the session was queued again and ran (an attack review)."""
    restarted = None
    try:
        blocker, queued = _queued_behind_a_blocker(isolated_env)
        with _impostor(isolated_env, queued) as imp:
            restarted = DaemonProc(isolated_env).start()
            with restarted.client() as c:
                reply = c.request("session.stop", session=queued)
                assert reply["awaiting_runner"] is True and reply["stopping"] is True, reply
                c.kill(blocker)  # its slot frees: were the session queued again, it would run now
                final = wait_until(lambda: (s := c.session(queued))["status"] not in ("queued", "created", "running")
                                   and s, timeout=60, what="the claimed session to end")
                assert final["status"] == "cancelled", final
                assert not list(c.history(queued, kinds=["session.started"])), "the stopped session ran"
                assert _alive(imp), "the impostor was killed: it never proved it is one of ours"
    finally:
        if restarted is not None:
            restarted.stop()
        kill_runners(isolated_env)


def test_a_live_runner_beside_an_impostor_is_the_one_adopted(daemon: DaemonProc) -> None:
    """The daemon died before it recorded a running session's pid, and at the restart a same-user process is titled
    as that session's runner too (started after it, so its pid is higher: the old search kept the last one found).
    The runner proves itself with its signed hello, which names its pid: it is the one adopted (``session.launched``
    recovered with its pid), the session completes, and the impostor is neither adopted nor signalled."""
    with daemon.client() as c:
        sid = c.start("labd_testflows:ticker", params={"n": 60, "delay": 0.05})
        wait_until(lambda: len(list(c.history(sid, kinds=["custom"]))) >= 5, timeout=30, what="ticks")
        pid = c.session(sid)["pid"]
    daemon.kill9()
    restarted = None
    try:
        with _impostor(daemon.home, sid) as imp:
            restarted = _restart_while_held(daemon, pid, lambda conn: conn.execute(
                "UPDATE sessions SET pid = NULL, pid_create_time = NULL, status = 'created' WHERE id = ?", (sid,)))
            with restarted.client() as c:
                final = c.wait(sid, timeout=60)
                assert final["status"] == "completed", final
                assert _pids(c, sid, "session.launched") == {pid}
                assert imp.pid not in _pids(c, sid, "session.adopted")
                assert _alive(imp), "the impostor was signalled"
    finally:
        if restarted is not None:
            restarted.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
