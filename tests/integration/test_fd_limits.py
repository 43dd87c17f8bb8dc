"""File descriptor limits: the daemon's own (raised to its hard limit at start), the sessions' (a fixed, lower
RLIMIT_NOFILE inherited from the template by every session process), the systemd unit's LimitNOFILE, and a limits
monitor that outlives running out of file descriptors (it died of one EMFILE and never enforced a limit again).

The daemon is starved of descriptors for real: its soft RLIMIT_NOFILE is lowered from outside (``prlimit``, as an
administrator could) to its lowest free descriptor, so every open fails with EMFILE, as it did when an attack
review filled the daemon's table with connections. Nothing may connect to its Unix sockets meanwhile: libzmq's IPC
listener aborts the process on EMFILE in accept (src/ipc_listener.cpp), which no fix here can change.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, running_daemon, wait_until

NOFILE = resource.RLIMIT_NOFILE


def _limits(pid: int) -> tuple[int, int]:
    """(soft, hard) "Max open files" of a process, as /proc/<pid>/limits shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def _output(c: Any, sid: str) -> str:
    return "".join(e["payload"]["text"] for e in c.history(sid) if e["kind"] == "output")


@contextmanager
def _starved(pid: int) -> Iterator[None]:
    """While the block runs, process ``pid`` can open no file descriptor: its soft limit is its lowest free fd (a
    new fd takes the lowest free number), kept there by a thread that lowers it again should an fd below be closed.
    The lowest free fd is the least of many readings: a thread holding an fd for a moment (the monitor reads /proc
    all the time) makes one reading one too high, and that slot, once closed, would let the thread go on working
    through it. Not lower than that: poll(2) refuses more descriptors than the soft limit (EINVAL), and libzmq
    aborts on it. The hard limit is left alone; the soft one is restored after."""
    soft, hard = resource.prlimit(pid, NOFILE)

    def lowest_free() -> int:
        used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        return next(fd for fd in range(len(used) + 1) if fd not in used)

    def least(seconds: float) -> int:
        end = time.monotonic() + seconds
        low = lowest_free()
        while time.monotonic() < end:
            low = min(low, lowest_free())
        return low

    done = threading.Event()

    def hold() -> None:
        while not done.is_set():
            low = least(0.05)
            if low < resource.prlimit(pid, NOFILE)[0]:
                resource.prlimit(pid, NOFILE, (low, hard))

    resource.prlimit(pid, NOFILE, (least(0.3), hard))
    keeper = threading.Thread(target=hold, daemon=True)
    keeper.start()
    wait_until(lambda: lowest_free() >= resource.prlimit(pid, NOFILE)[0], timeout=5,
               what="the daemon's descriptor table full up to its soft limit")
    try:
        yield
    finally:
        done.set()
        keeper.join(5)
        resource.prlimit(pid, NOFILE, (soft, hard))


def test_the_monitor_outlives_a_daemon_out_of_file_descriptors(isolated_env: Path) -> None:
    """With the daemon out of file descriptors its limits monitor cannot list /proc (EMFILE): the failed passes are
    logged and retried, `labd status` says the monitor is failing (limits not enforced) while they do, and once
    descriptors are free again the monitor works again: a session's wall-time limit still ends it on time.
    Before, the first EMFILE ended the monitor thread for good: no limit was enforced afterwards."""
    timeout = 15.0  # room for a loaded box: the starvation begins well before the limit is due
    with running_daemon(isolated_env) as d, d.client() as c:
        assert d.proc is not None
        t0 = time.monotonic()
        # a memory limit makes the monitor pass every 0.1 s (limit_interval), so failures show at once
        sid = c.start("demo.sleep", params={"seconds": 120}, timeout=timeout, memory="1G")
        # the runner has connected and written (nothing may connect to the daemon's sockets while it is starved)
        wait_until(lambda: "sleeping" in _output(c, sid), timeout=30, what="the session's first output")
        assert c.status().get("monitor", {}).get("ok") is not False
        seen: list[dict[str, Any]] = []

        def failing() -> bool:
            seen.append(c.status().get("monitor") or {})
            return seen[-1].get("failures", 0) >= 2

        with _starved(d.proc.pid):
            starved_at = time.monotonic() - t0
            reported = _poll(failing, 10.0)
        assert starved_at < timeout - 3, f"the starvation began too late ({starved_at:.1f} s) to test the limit"
        assert d.proc.poll() is None, f"the daemon died: {d.log()[-2000:]}"
        final = c.wait(sid, timeout=timeout + 20)
        elapsed = time.monotonic() - t0
        assert final["status"] == "failed" and final["reason"].startswith("stopped: wall time"), final
        assert elapsed < timeout + 6, f"ended {elapsed:.1f} s after its start (limit {timeout} s)"
        assert reported, f"labd status never said the monitor was failing: {seen[-3:]}"
        bad = seen[-1]
        assert bad["ok"] is False and bad["alive"] is True and "Errno 24" in bad["error"], bad
        assert "pass" in bad["failing"], bad
        healthy = wait_until(lambda: (c.status()["monitor"] or {}).get("ok"), timeout=10, what="monitor healthy")
        assert healthy
        log = d.log()
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    failed = [x for x in lines if str(x.get("event", "")).startswith("limits monitor: a pass over the process")]
    # the first failure with its traceback; the repeats (every 0.1 s) not logged, and no line per pid read
    assert failed and "exception" in failed[0], failed[:2]
    assert len(failed) <= 3, f"{len(failed)} lines for one spell of failures"
    assert any(x.get("event") == "limits monitor works again" for x in lines)


def _poll(pred: Any, timeout: float) -> bool:
    """``pred()`` until true or ``timeout`` s passed; False then (unlike wait_until, no failure: asserted later)."""
    try:
        wait_until(pred, timeout=timeout, interval=0.05)
        return True
    except AssertionError:
        return False


@contextmanager
def _soft_nofile(value: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE lowered while the block runs, so a child started in it inherits it."""
    soft, hard = resource.getrlimit(NOFILE)
    resource.setrlimit(NOFILE, (min(value, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(NOFILE, (soft, hard))


def test_the_daemon_raises_its_soft_nofile_to_its_hard_limit(isolated_env: Path) -> None:
    """A daemon started with a low soft RLIMIT_NOFILE (systemd's default is 1024) raises it to its hard limit at
    start, and logs both figures; the template, which forks every session process, has the sessions' limit."""
    hard = resource.getrlimit(NOFILE)[1]
    assert hard > 1024, "this test needs a hard limit above 1024"
    d = DaemonProc(isolated_env)
    with _soft_nofile(1024):
        d.start(wait=False)
    try:
        d.wait_ready()
        assert d.proc is not None
        assert _limits(d.proc.pid) == (hard, hard)
        with d.client() as c:
            st = c.status()
        assert st["nofile"]["daemon"] == {"soft": hard, "hard": hard, "soft_at_start": 1024}
        assert _limits(st["template_pid"]) == (min(4096, hard),) * 2
        logged = [json.loads(x) for x in d.log().splitlines() if '"file descriptor limits"' in x]
        assert logged and logged[0]["soft"] == hard and logged[0]["soft_at_start"] == 1024, logged
    finally:
        d.stop()


def test_session_processes_have_the_configured_nofile(isolated_env: Path) -> None:
    """`[daemon] session_nofile` is the RLIMIT_NOFILE (soft = hard) of a session's runner and of the code its
    agent executes (sandboxed), which cannot raise it; the daemon keeps its own, higher limit."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text("[daemon]\nsession_nofile = 1536\n")
    program = ("import resource\n"
               "print('NOFILE', *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
               "try:\n"
               "    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))\n"
               "    print('RAISED')\n"
               "except (OSError, ValueError):\n"
               "    print('DENIED raise')\n")
    with running_daemon(isolated_env) as d, d.client() as c:
        assert d.proc is not None
        sid = c.start("demo.sleep", params={"seconds": 120})
        pid = wait_until(lambda: c.session(sid)["pid"], timeout=30, what="the runner's pid")
        wait_until(lambda: "sleeping" in _output(c, sid), timeout=30, what="the session's first output")
        assert _limits(pid) == (1536, 1536)
        assert _limits(d.proc.pid)[0] > 1536
        c.stop(sid)
        code = c.start("labd_testflows:hostile_code", params={"programs": [program]})
        final = c.wait(code, timeout=90)
        assert final["status"] == "completed", final.get("reason")
        report = "\n".join(e["payload"]["output"] for e in c.history(code, kinds=["code.execution"]))
    assert "NOFILE 1536 1536" in report and "DENIED raise" in report, report


def test_the_service_unit_sets_limit_nofile(tmp_path: Path) -> None:
    """The unit `labd service install` writes sets LimitNOFILE (systemd's default soft limit, 1024, is what a
    daemon holding a connection per client and runner can reach), high but finite, and systemd accepts it."""
    from labd.frontends.service import render_unit

    unit = render_unit(sys.executable, str(tmp_path / "home"))
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert values and values[0].isdigit() and 65536 <= int(values[0]) <= 1 << 20, values
    exe = "/usr/bin/systemd-analyze"
    if Path(exe).exists():
        path = tmp_path / "labd.service"
        path.write_text(unit)
        r = subprocess.run([exe, "--user", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert "LimitNOFILE" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_tcp_gateway_outlives_a_daemon_out_of_file_descriptors(isolated_env: Path, tmp_path: Path) -> None:
    """A remote client's request reaches the TCP gateway while the daemon has no file descriptor left: the relay
    to the local control socket cannot be made (EMFILE), so that request goes unanswered (the client times out),
    the failure is logged, and once descriptors are free the same client's next request is answered. Before, the
    ZMQError ended the gateway thread: no remote client was answered again until a restart."""
    import psutil

    from labd.ipc import Client, LabdError
    from tests.integration.test_tcp import _port

    port = _port()
    with running_daemon(isolated_env, args=["--listen", f"tcp://127.0.0.1:{port}"]) as d, d.client() as local:
        assert d.proc is not None
        conn = local.request("remote.add", name="laptop")["connection"]
        path = tmp_path / "laptop.labd.json"
        path.write_text(json.dumps(conn))
        os.chmod(path, 0o600)
        daemon = psutil.Process(d.proc.pid)

        def peers() -> int:
            return sum(1 for c in daemon.net_connections(kind="tcp")
                       if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)

        before = peers()
        with Client(connection_file=path, timeout=3) as remote:
            wait_until(lambda: peers() > before, timeout=15, what="the remote client connected over TCP")
            with _starved(d.proc.pid):
                with pytest.raises(LabdError) as err:
                    remote.ping()  # its relay to the control socket needs a descriptor
                assert err.value.code == "timeout"
            answered = remote.request("remote.list")  # the same client, the gateway still there
        assert answered["clients"] == ["laptop"]
        log = d.log()
        assert "TCP gateway pass failed" in log and "the TCP gateway works again" in log
