"""Checking a user's workflow (importing its module in a child of the template) never holds up the daemon.

The module here waits at import for a gate file the test creates, so each test knows for certain that the
check is still under way while it does something else: no timing assumptions.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from labd.ipc import LabdError
from labd.ipc.wire import Codec
from tests.conftest import wait_until

# The marks go in a folder of their own: the check is confined as a runner is (Landlock), and a runner cannot
# create files directly in the folder that holds the daemon's home (here: the test's tmp_path), only in folders
# that existed when it confined itself.
GATED = '''
import pathlib, time
_here = pathlib.Path(__file__).parent / "marks"
with open(_here / "imports", "a") as f:
    f.write("import\\n")
_deadline = time.monotonic() + 90
while not (_here / "gate").exists() and time.monotonic() < _deadline:
    time.sleep(0.02)

def study(ctx, n: int = 1):
    print(f"ran {n}")
'''


def _imports(tmp_path: Path) -> int:
    path = tmp_path / "marks" / "imports"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def gated(tmp_path: Path) -> Path:
    (tmp_path / "gated.py").write_text(GATED)
    (tmp_path / "marks").mkdir()
    yield tmp_path
    (tmp_path / "marks" / "gate").touch()  # never leave an import child waiting


def _ids(c: Any, **kw: Any) -> set[str]:
    """The ids of the daemon's sessions (the module's shared daemon: other tests' sessions are there too)."""
    return {r["id"] for r in c.sessions(limit=1000, **kw)}


def _start_in_thread(daemon: Any, cwd: Path, out: dict[str, Any], **kw: Any) -> threading.Thread:
    def run() -> None:
        try:
            with daemon.client(timeout=90) as c:
                out["sid"] = c.start("gated:study", params={"n": 2}, cwd=str(cwd), **kw)
        except LabdError as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_slow_import_does_not_hold_up_other_clients(daemon, gated: Path) -> None:
    """While one client's workflow module is still importing, the daemon answers other clients and runs
    their sessions to the end; the slow start then completes normally (before, the daemon's main loop waited
    for the import: every client stalled for as long as the slowest module took to import). (A daemon of its
    own: it asserts on the daemon's count of checks under way.)"""
    out: dict[str, Any] = {}
    t = _start_in_thread(daemon, gated, out)
    wait_until(lambda: _imports(gated) == 1, timeout=30, what="the check to start importing")
    with daemon.client(timeout=10) as c:  # before the fix this timed out: the daemon was inside the import
        assert c.ping()
        assert c.status()["workflow_checks"] == 1
        other = c.start("demo.count", params={"n": 1, "delay": 0})
        assert c.wait(other, timeout=60)["status"] == "completed"
        assert t.is_alive() and "sid" not in out  # the gated start is still being checked
        (gated / "marks" / "gate").touch()
        t.join(60)
        assert out.get("sid"), out
        row = c.wait(out["sid"], timeout=60)
        assert row["status"] == "completed"
        assert "ran 2" in "".join(e["payload"].get("text", "") for e in c.history(out["sid"]) if e["kind"] == "output")
        assert c.status()["workflow_checks"] == 0


def test_a_keyed_retry_during_the_check_joins_the_first_start(shared_daemon, gated: Path) -> None:
    """Two starts with one idempotency key, the second sent while the first's workflow is still importing:
    one check, one session, both replies name it."""
    with shared_daemon.client() as c:
        before = _ids(c, workflow="gated:study")
        codec = Codec(c.info.key_bytes)
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(c.info.control)
        body = {"workflow": "gated:study", "params": {"n": 1}, "cwd": str(gated), "pythonpath": [],
                "idempotency_key": "retry-during-check"}
        s.send_multipart(codec.pack("session.start", body))
        s.send_multipart(codec.pack("session.start", body))  # same socket: handled after the first
        wait_until(lambda: _imports(gated) == 1, timeout=30, what="the first check to start importing")
        (gated / "marks" / "gate").touch()
        replies = []
        for _ in range(2):
            assert s.poll(60_000), "no reply"
            replies.append(codec.unpack(s.recv_multipart()).body)
        s.close(0)
        assert all(r["ok"] for r in replies), replies
        sids = {r["result"]["session"] for r in replies}
        assert len(sids) == 1
        assert _ids(c, workflow="gated:study") - before == sids
        c.wait(sids.pop(), timeout=60)
        assert _imports(gated) == 2  # the one check and the one runner: the retry imported nothing


def test_the_template_dying_during_a_check_refuses_the_start_clearly(daemon, gated: Path) -> None:
    """The runner template killed while it checks a workflow: the start is refused with ``launch_failed``
    (not left waiting forever), and the next start works on a fresh template. (A daemon of its own: it kills the
    daemon's template.)"""
    out: dict[str, Any] = {}
    t = _start_in_thread(daemon, gated, out)
    wait_until(lambda: _imports(gated) == 1, timeout=30, what="the check to start importing")
    with daemon.client() as c:
        os.kill(c.status()["template_pid"], signal.SIGKILL)
        t.join(60)
        assert not t.is_alive()
        err = out.get("error")
        assert isinstance(err, LabdError) and err.code == "launch_failed", out
        assert "try again" in err.message
        sid = c.start("demo.count", params={"n": 1, "delay": 0})
        assert c.wait(sid, timeout=60)["status"] == "completed"


def test_a_bad_parameter_is_still_refused_before_any_session_exists(shared_daemon, gated: Path) -> None:
    """The check still decides the start: a value that does not fit the workflow's signature is a clear
    ``bad_params`` error and no session row is made."""
    (gated / "marks" / "gate").touch()
    with shared_daemon.client() as c:
        before = _ids(c)
        with pytest.raises(LabdError) as info:
            c.start("gated:study", params={"n": "many"}, cwd=str(gated))
        assert info.value.code == "bad_params" and "n" in info.value.message
        assert _ids(c) == before


def test_ctrl_c_while_the_start_is_checked_says_the_session_may_start(shared_daemon, gated: Path) -> None:
    """Ctrl-C on `labd run` while the daemon still checks the workflow (its import is slow): the command exits 130
    and says that the session may start all the same and where to see it (the daemon goes on with the request);
    before, it exited 130 silently, and the session it then started went unnoticed."""
    import subprocess
    import sys

    daemon = shared_daemon
    with daemon.client() as c:
        before = _ids(c)
    # as from a terminal: SIGINT at its default (a test run started in the background by a shell without job
    # control, as CI may be, has it ignored, and the child would inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(daemon.home), "run", "gated.py:study"],
                            cwd=gated, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: _imports(gated) >= 1, timeout=60, what="the check importing the module")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "may start all the same" in err and "labd ps" in err, err
    assert "Traceback" not in err
    (gated / "marks" / "gate").touch()
    with daemon.client() as c:  # it does start: the message was true
        wait_until(lambda: len(_ids(c) - before) == 1, timeout=60, what="the session started after all")
        (sid,) = _ids(c) - before
        c.wait(sid, timeout=60)


SPAWNING = '''
import os, pathlib, subprocess, time
_marks = pathlib.Path(__file__).parent / "marks"
def _note(pid):
    with open(_marks / "pids", "a") as f:
        f.write(f"{pid}\\n")
_note(subprocess.Popen(["sleep", "TOKEN1"]).pid)                          # stays in the check's group
_note(subprocess.Popen(["sleep", "TOKEN2"], start_new_session=True).pid)  # tries to leave it
_child = os.fork()
if _child == 0:  # holds every fd the check had (its answer pipe too), leaves the group, lives on
    os.setsid()
    try:
        os.setpgid(0, 0)  # EPERM for a session leader: tried all the same
    except OSError:
        pass
    time.sleep(300)
    os._exit(0)
_note(_child)

def study(ctx, n: int = 1):
    print(f"ran {n}")
'''


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed and waiting for a parent that does not reap, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_nothing_a_module_starts_at_import_outlives_its_check(daemon, tmp_path: Path) -> None:
    """A workflow module that, while it is imported, starts a subprocess, one in a new session, and a forked child
    that calls setsid/setpgid and keeps the check's answer pipe open: the check still answers at once (here
    ``bad_params``, not the 20 s import timeout), and none of the three outlives it. They outlived it, as
    root-owned orphans without limits, one per check."""
    token = str(300 + os.getpid() % 500)
    (tmp_path / "spawning.py").write_text(SPAWNING.replace("TOKEN1", token).replace("TOKEN2", token + ".5"))
    (tmp_path / "marks").mkdir()
    for _ in range(2):  # the checker forked ahead, then one forked for the check
        with daemon.client() as c, pytest.raises(LabdError) as info:
            c.start("spawning:study", params={"n": "many"}, cwd=str(tmp_path))
        assert info.value.code == "bad_params", info.value
    pids = [int(p) for p in (tmp_path / "marks" / "pids").read_text().split()]
    assert len(pids) == 6, pids
    wait_until(lambda: not any(_alive(p) for p in pids), timeout=30,
               what=f"the processes the checks started ({pids}) to be gone")


HELD = GATED.replace("_deadline = ", """
import os, subprocess
with open(_here / "pids", "a") as f:
    f.write(f"{os.getpid()} {subprocess.Popen(['sleep', 'TOKEN']).pid}\\n")
_deadline = """)


def test_a_check_under_way_when_the_daemon_dies_leaves_nothing_behind(daemon, gated: Path) -> None:
    """The daemon killed while a workflow module is still importing (it has started a subprocess and waits):
    the template, left without a daemon, kills the check and what its module started, and then exits. It kept
    both alive before: the template waited for every child, the check for its module, for as long as that took."""
    (gated / "held.py").write_text(HELD.replace("TOKEN", str(300 + os.getpid() % 500)))

    def start() -> None:
        try:
            with daemon.client(timeout=90) as c:
                c.start("held:study", cwd=str(gated))
        except LabdError:  # the daemon is killed under the request
            pass

    threading.Thread(target=start, daemon=True).start()
    marks = gated / "marks" / "pids"
    wait_until(lambda: marks.exists() and marks.read_text().endswith("\n"), timeout=30,
               what="the check to start its module's subprocess")
    checker, child = (int(p) for p in marks.read_text().split())
    with daemon.client() as c:
        template = c.status()["template_pid"]
    daemon.kill9()
    wait_until(lambda: not any(_alive(p) for p in (checker, child, template)), timeout=30,
               what=f"the check ({checker}), its subprocess ({child}) and the template ({template}) to be gone")
