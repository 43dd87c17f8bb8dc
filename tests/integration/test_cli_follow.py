"""Following sessions: agent activity in `logs` and `run --follow`, --raw, --tail, --timestamps, Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

from tests.conftest import DaemonProc, wait_until
from tests.integration.cli_support import labd


def test_logs_show_agent_activity(shared_daemon) -> None:
    """For an agent workflow, `logs` shows steps, agent turns, LLM calls, tool calls, code runs, files and
    costs (on stderr), and `--raw` shows only what the session printed."""
    r = labd("run", "planning_and_control", "--follow")
    assert r.returncode == 0, r.stderr
    sid = r.stderr.split()[2]
    for text in (r.stderr, labd("logs", sid).stderr):
        assert re.search(r"▸ n\d+ step 1", text) and "engineer · turn" in text
        assert "engineer → run_code(" in text and "ran python code, exit 0" in text
        assert "← labd-offline" in text and "session total $" in text and "+ step_1.json" in text
        assert "== session completed" in text
    raw = labd("logs", sid, "--raw")
    assert raw.returncode == 0 and raw.stderr == ""


def test_logs_tail_and_timestamps(shared_daemon) -> None:
    """`--tail N` prints the last N lines only; `--timestamps` prefixes every line with its time."""
    sid = labd("run", "demo.count", "-p", "n=6", "-p", "delay=0", "--follow").stderr.split()[2]
    tail = labd("logs", sid, "--tail", "3", "--raw")
    assert tail.stdout == "count 4/6\ncount 5/6\ncount 6/6\n"
    stamped = labd("logs", sid, "-n", "2", "--raw", "--timestamps").stdout.splitlines()
    assert len(stamped) == 2 and all(re.match(r"\d\d:\d\d:\d\d\.\d{3} count [56]/6$", ln) for ln in stamped)
    everything = labd("logs", sid, "--timestamps")
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} == session completed", everything.stderr, re.M)
    assert labd("logs", sid, "--tail", "0").stdout == ""


def test_following_a_session_that_already_ended_returns(shared_daemon) -> None:
    """`labd logs -f S --tail N` of an ended session prints the last N lines and exits (it waited forever for
    a `session.ended` that was already behind it), and so does the SDK's follow from its last seq."""
    sid = labd("run", "demo.count", "-p", "n=3", "-p", "delay=0", "--follow").stderr.split()[2]
    followed = labd("logs", "-f", sid, "--tail", "2", "--raw", timeout=60)
    assert followed.returncode == 0 and followed.stdout == "count 2/3\ncount 3/3\n", followed
    with shared_daemon.client() as c:
        last = c.session(sid)["last_seq"]
        assert list(c.follow(sid, since=last, timeout=60)) == []
        assert [e["kind"] for e in c.follow(sid, since=last - 1, timeout=60)] == ["session.ended"]


def test_approval_waiting_is_shown_with_how_to_answer(shared_daemon) -> None:
    """A session waiting for a human shows the request and the command that answers it."""
    sid = labd("run", "labd_testflows:custom_approval").stdout.strip()
    with shared_daemon.client() as c:
        wait_until(lambda: c.approvals(sid), timeout=60, what="the approval")
    err = labd("logs", sid).stderr
    assert "waiting" in err and f"labd resolve {sid}" in err
    labd("kill", sid)


def test_approve_of_a_request_with_its_own_options_names_labd_resolve(shared_daemon) -> None:
    """`labd approve S` on an approval whose options are the workflow's own (red/green) is refused with the
    options it takes and the command that answers it (`labd resolve S OPTION`); that command then works."""
    sid = labd("run", "labd_testflows:custom_approval").stdout.strip()
    with shared_daemon.client() as c:
        wait_until(lambda: c.approvals(sid), timeout=60, what="the approval")
    refused = labd("approve", sid)
    assert refused.returncode == 2 and "allowed: red, green" in refused.stderr, refused
    assert f"labd resolve {sid} OPTION" in refused.stderr and "[bad_decision]" in refused.stderr
    assert labd("resolve", sid, "green").returncode == 0
    with shared_daemon.client() as c:
        assert c.wait(sid, timeout=60)["status"] == "completed"


def test_ctrl_c_during_run_follow_detaches_and_says_so(shared_daemon) -> None:
    """Ctrl-C while following: exit 130, the message says the session keeps running and how to stop it;
    the session really does keep running."""
    proc = subprocess.Popen([sys.executable, "-m", "labd", "run", "demo.count", "-p", "n=100", "-p", "delay=0.2",
                             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "count 1/100\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    sid = err.split()[2]
    assert f"session {sid} keeps running" in err and f"labd stop {sid}" in err
    with shared_daemon.client() as c:
        assert c.session(sid)["status"] == "running"
        c.kill(sid)


def test_ctrl_c_during_replay_wait_names_the_replay_that_keeps_running(shared_daemon) -> None:
    """`labd replay S --wait` says the replay's id at once; Ctrl-C while it waits: exit 130 and say which session
    the replay is, that it keeps running and how to stop or follow it (before: exit 130 and nothing at all, so the
    new session's id was lost)."""
    with shared_daemon.client() as c:
        orig = c.start("demo.sleep", params={"seconds": 600})
        wait_until(lambda: c.session(orig)["status"] == "running", timeout=30, what="the original session")
        c.stop(orig)
        wait_until(lambda: c.session(orig)["status"] == "cancelled", timeout=30, what="its stop")
        proc = subprocess.Popen([sys.executable, "-m", "labd", "replay", orig, "--wait"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        said = proc.stderr.readline()  # its id, once the daemon has answered (a Ctrl-C before is another case)
        replay = wait_until(lambda: next((s["id"] for s in c.sessions() if s.get("parent_id") == orig
                                          and s["status"] == "running"), None), timeout=30, what="the replay")
        assert f"== replay session {replay}" in said, said
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert f"session {replay} keeps running" in err and f"labd stop {replay}" in err, err
        assert "Traceback" not in err
        assert c.session(replay)["status"] == "running"
        c.kill(replay)


def test_follow_says_the_session_keeps_running_when_the_daemon_stops(daemon) -> None:
    """`labd run --follow` whose daemon is shut down mid-follow, and none serves again within its restart wait
    (``LABD_RESTART_WAIT``, here 2 s; 60 s by default), exits 2 with the `no_daemon` error, and says the session
    keeps running and how to follow it again (before: only "stopped before it replied", which reads as a failed
    request); the session does keep running and a new daemon adopts it. (A daemon of its own: it stops and
    restarts it, and takes the newest session of all for the one it runs.)"""
    proc = subprocess.Popen([sys.executable, "-m", "labd", "run", "demo.count", "-p", "n=1000", "-p", "delay=0.1",
                             "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LABD_RESTART_WAIT": "2s"})
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("count 1/1000")  # following, live (100 s: not over on a slow box)
    with daemon.client() as c:
        sid = c.sessions()[0]["id"]
    daemon.stop()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert f"session {sid} keeps running" in err and f"labd logs -f {sid}" in err and "[no_daemon]" in err
    assert "result(" not in err and err.count("adopts it") == 1, err  # the CLI's words, once (not the SDK's too)
    daemon.start()
    with daemon.client() as c:
        assert c.session(sid)["status"] == "running"
        c.kill(sid)


def _has_socket(pid: int) -> bool:
    """Whether process ``pid`` has a socket open (its fds open and close meanwhile: those gone are skipped)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                return True
        except FileNotFoundError:
            continue
    return False


def test_labd_wait_outlives_a_daemon_restart(daemon) -> None:
    """`labd wait SESSION` (no --timeout: until it ends) whose daemon is killed and started again goes on waiting
    with the new daemon and exits 0 when the session completes (it exited 2 at once, telling a CLI user to call
    Python's `wait()`). (A daemon of its own: the test kills and restarts it.)"""
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 40, "delay": 0.1})
    code, _out, err = _through_a_restart(daemon, ["wait", sid])
    assert code == 0, err
    with daemon.client() as c:
        assert c.session(sid)["status"] == "completed"


def _through_a_restart(daemon: DaemonProc, argv: list[str]) -> tuple[int, str, str]:
    """Run `labd ARGV`; once it is connected, kill the daemon; check it is still waiting a few seconds later (as a
    restart by a service manager or by hand takes: one that gives up ends meanwhile, before the fix within ~1 s);
    start the daemon again; its exit status, stdout and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "labd", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: _has_socket(proc.pid), timeout=30, what=f"labd {argv[0]} connected")
        daemon.kill9()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: proc.poll() is not None, timeout=5, what=f"labd {argv[0]} to end without a daemon")
        assert proc.poll() is None, proc.communicate()[1]
        daemon.start()
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_logs_follow_outlives_a_daemon_restart(daemon) -> None:
    """`labd logs -f SESSION` whose daemon is killed and started again goes on with the new daemon: every line once,
    in order, and exit 0 when the session completes. Before, it exited 2 (`no_daemon`) at once, while `labd wait`
    carried on: every follower broke at each service restart."""
    with daemon.client() as c:
        sid = c.start("demo.count", params={"n": 40, "delay": 0.1})
    code, out, err = _through_a_restart(daemon, ["logs", "-f", "--raw", sid])
    assert code == 0, err
    counted = [line for line in out.splitlines() if line.startswith("count ")]
    assert counted == [f"count {i}/40" for i in range(1, 41)], out


def test_logs_follow_exits_with_how_the_session_ended(shared_daemon) -> None:
    """`labd logs -f` exits as `labd run --wait` does for the same session: 1 for a failed one (before: 0, so a
    script could not tell), also with --tail; 1 for one stopped while followed live (cancelled); 0 for a completed
    one; plain `labd logs` (no follower) stays 0."""
    failed = labd("run", "demo.fail", "--wait")
    sid = failed.stdout.strip()
    assert failed.returncode == 1 and sid, failed
    for args in (("logs", "-f", sid), ("logs", "-f", "--tail", "1", sid), ("logs", "--raw", "-f", sid)):
        r = labd(*args)
        assert r.returncode == 1, (args, r)
        assert "about to fail" in r.stdout or "--tail" in args, (args, r)  # the history, then the exit status
    assert labd("logs", sid).returncode == 0
    done = labd("run", "demo.count", "-p", "n=1", "-p", "delay=0", "--wait").stdout.strip()
    assert labd("logs", "-f", done).returncode == 0
    with shared_daemon.client() as c:
        live = c.start("demo.sleep", params={"seconds": 600})
        proc = subprocess.Popen([sys.executable, "-m", "labd", "logs", "-f", "--raw", live], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("sleeping ")  # following it live
        c.stop(live, grace=1)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert c.session(live)["status"] == "cancelled"
