"""The daemon as a service: dead-daemon detection, `serve --detach` / `labd wait`, the drain policy, systemd
notifications (READY/STATUS/WATCHDOG over a real NOTIFY_SOCKET), journald priorities and `labd service`
(issue 8, items 10 and "a real systemd service")."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, DaemonProc, kill_runners, runner_pid, running_daemon, wait_until


def _labd(*args: str, timeout: float = 90, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


# ---- dead daemon, detach, wait --------------------------------------------------------------------------------
def test_client_fails_fast_against_a_killed_daemon(daemon: DaemonProc) -> None:
    """After kill -9 of the daemon its connection file stays behind; a client sees that the pid is gone and
    fails with `no_daemon` at once, instead of waiting its 15 s reply timeout; the CLI says so clearly."""
    from labd.ipc import Client, LabdError

    daemon.kill9()
    t0 = time.monotonic()
    with pytest.raises(LabdError) as err:
        Client(daemon.home, timeout=15.0)
    elapsed = time.monotonic() - t0
    print(f"dead daemon detected in {elapsed * 1000:.1f} ms (reply timeout 15 s)")
    assert err.value.code == "no_daemon" and "is not running" in err.value.message
    assert elapsed < 5.0, "the client waited for a reply instead of checking the daemon's pid"
    r = _labd("ps")
    assert r.returncode == 2 and "[no_daemon]" in r.stderr and "killed or crashed" in r.stderr, r.stderr


@pytest.mark.parametrize("exact", [True, False], ids=["start_ticks", "started-only"])
def test_recycled_pid_is_not_mistaken_for_the_daemon(daemon: DaemonProc, exact: bool) -> None:
    """The connection file names the daemon's pid *and* start (exact clock ticks, or the start time when a
    reader has only that): a stale file whose pid now belongs to another live process (pid 1, started long
    before) is still recognised as stale."""
    from labd.ipc import Client, LabdError
    from labd.ipc.paths import layout_for

    path = layout_for(daemon.home).connection_file
    info = json.loads(path.read_text())
    assert info["pid"] == daemon.proc.pid and isinstance(info["started"], float)
    assert isinstance(info["start_ticks"], int)
    with Client(daemon.home) as c:  # the live daemon passes the same check
        c.ping()
    daemon.kill9()
    info["pid"] = 1
    if not exact:
        del info["start_ticks"]
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, json.dumps(info).encode())
    os.close(fd)
    with pytest.raises(LabdError) as err:
        Client(daemon.home, timeout=15.0)
    assert err.value.code == "no_daemon"


def test_serve_detach_then_ps_works_at_once(isolated_env: Path) -> None:
    """`labd serve --detach` returns only when its daemon answers (printing pid and log file), so the next
    command works immediately; a second `serve --detach` on the same home starts nothing and says which daemon
    already serves it (exit 0: the daemon the user asked for is there)."""
    r = _labd("serve", "--detach")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split("pid ")[1].split()[0])
    try:
        assert "log: " in r.stdout and Path(r.stdout.split("log: ")[1].strip()).exists()
        ps = _labd("ps")
        assert ps.returncode == 0 and "no live sessions" in ps.stdout + ps.stderr, ps.stderr
        again = _labd("serve", "--detach")
        assert again.returncode == 0 and f"labd daemon pid {pid} already serving" in again.stdout, again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                   timeout=30, what="detached daemon exit")
        kill_runners(isolated_env)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (the state follows the last ')' of /proc/PID/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_labd_shutdown_stops_the_daemon_and_sessions_keep_running(isolated_env: Path) -> None:
    """`labd shutdown` stops a detached daemon and returns once its process is gone, saying how many sessions
    keep running; the running session survives it and the next daemon adopts it; with no daemon, shutdown
    fails with a clear `no_daemon` error (exit 2)."""
    from labd.ipc import Client

    r = _labd("serve", "--detach")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split("pid ")[1].split()[0])
    try:
        with Client(isolated_env) as c:
            sid = c.start("demo.sleep", params={"seconds": 60})
            runner = runner_pid(c, sid)
        down = _labd("shutdown", "--timeout", "60")
        assert down.returncode == 0, down.stderr
        assert f"pid {pid} stopped" in down.stdout and "1 session keeps running" in down.stdout, down.stdout
        assert _gone(pid), "shutdown returned before the daemon exited"
        assert Path(f"/proc/{runner}").exists(), "the session's runner must outlive the daemon"
        again = _labd("serve", "--detach")
        assert again.returncode == 0, again.stderr
        with Client(isolated_env) as c:
            wait_until(lambda: c.session(sid)["status"] == "running" and any(
                e["kind"] == "session.adopted" for e in c.history(sid)), timeout=60, what="adopted")
            c.stop(sid, grace=1)
            c.wait(sid, timeout=60)
        assert _labd("shutdown").returncode == 0
        none = _labd("shutdown")
        assert none.returncode == 2 and "[no_daemon]" in none.stderr and "nothing to stop" in none.stderr, none.stderr
        remote = _labd("shutdown", "--connect", str(isolated_env / "remote.json"))
        assert remote.returncode == 2 and "[bad_request]" in remote.stderr and "this machine" in remote.stderr
    finally:
        kill_runners(isolated_env)
        _labd("shutdown", "--timeout", "30")


def test_labd_wait(isolated_env: Path) -> None:
    """`labd wait` fails (exit 2, timeout) when no daemon comes, and returns as soon as a starting daemon
    answers."""
    r = _labd("wait", "--timeout", "0.5")
    assert r.returncode == 2 and "[timeout]" in r.stderr, r.stderr
    d = DaemonProc(isolated_env).start(wait=False)
    try:
        r = _labd("wait", "--timeout", "90")
        assert r.returncode == 0 and f"pid {d.proc.pid} ready" in r.stdout, r.stderr
    finally:
        d.stop()


def test_drain_stops_sessions_before_exit(isolated_env: Path, notify_socket: NotifyListener) -> None:
    """Default policy: a stopped daemon leaves sessions running. With `serve --drain`, SIGTERM first stops
    every running session through the ordinary stop ladder (refusing new sessions meanwhile), records their
    ends, then exits 0; `labd shutdown` of such a daemon says it stopped them, not that they keep running. Under
    systemd the drain asks for the time it may take (`EXTEND_TIMEOUT_USEC`, with `STOPPING=1`): the unit's
    `TimeoutStopSec=60` killed a drain with longer graces midway (admin review)."""
    from labd.ipc import LabdError

    with running_daemon(isolated_env) as d:
        with d.client() as c:
            kept = c.start("demo.sleep", params={"seconds": 600})
            wait_until(lambda: c.session(kept)["status"] == "running", timeout=60, what="running")
        assert d.stop() == 0
        with running_daemon(isolated_env, args=["--drain"], extra_env={"NOTIFY_SOCKET": notify_socket.address}) as d2:
            with d2.client() as c:
                assert c.session(kept)["status"] == "running", "the session did not survive a plain stop"
                other = c.start("labd_testflows:stubborn")  # only SIGKILL ends it: the drain takes ~10 s
                wait_until(lambda: c.session(other)["status"] == "running", timeout=60, what="running")
            down = subprocess.Popen([sys.executable, "-m", "labd", "shutdown", "--timeout", "90"], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wait_until(lambda: "draining" in d2.log(), timeout=30, what="the drain to begin")
            with d2.client() as c:  # while draining, the daemon still answers but starts nothing new
                with pytest.raises(LabdError) as err:
                    c.start("demo.count", params={"n": 1})
                assert err.value.code == "draining"
            out, err_text = down.communicate(timeout=120)
            assert d2.proc.wait(60) == 0
            # `labd shutdown` said "2 sessions keep running (the next `labd serve` adopts them)": they were stopped
            assert down.returncode == 0 and "stopped its 2 running sessions first" in out, out + err_text
            assert "keep running" not in out
            [asked] = notify_socket.having("EXTEND_TIMEOUT_USEC")
            assert asked["STOPPING"] == "1" and "draining" in asked["STATUS"]
            assert int(asked["EXTEND_TIMEOUT_USEC"]) == (5 + 5 + 10 + 60) * 1_000_000  # the default graces
        with running_daemon(isolated_env) as d3, d3.client() as c:
            for sid in (kept, other):
                row = c.session(sid)
                assert row["status"] == "cancelled" and row["stop_by"] == "daemon", row
            assert c.session(other)["ended_by"] == "sigkill", "the drain did not run the whole ladder"


# ---- systemd notifications ------------------------------------------------------------------------------------
class NotifyListener:
    """A real sd_notify receiver: an AF_UNIX datagram socket the test binds, collecting messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str) -> list[dict[str, str]]:
        return [m for _, m in self.messages if key in m]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    path = Path(tempfile.mkdtemp(prefix="ln", dir="/tmp")) / "notify"
    listener = NotifyListener(str(path))
    yield listener
    listener.close()
    shutil.rmtree(path.parent, ignore_errors=True)


def test_ready_status_watchdog_over_notify_socket(isolated_env: Path, notify_socket: NotifyListener) -> None:
    """Under systemd (NOTIFY_SOCKET, WATCHDOG_USEC set) the daemon sends READY=1 with its MAINPID only when it
    answers requests, STATUS= lines, WATCHDOG=1 about every half watchdog period, STOPPING=1 on SIGTERM; and
    its sessions do not inherit NOTIFY_SOCKET (they must not speak for the daemon)."""
    from labd.ipc import Client

    d = DaemonProc(isolated_env, extra_env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"})
    d.start(wait=False)
    try:
        ready = wait_until(lambda: notify_socket.having("READY"), timeout=60, what="READY=1")[0]
        with Client(isolated_env, timeout=5.0) as c:  # ready means ready: the very next request is answered
            assert c.ping()["pid"] == d.proc.pid
            assert ready["READY"] == "1" and ready["MAINPID"] == str(d.proc.pid) and "serving" in ready["STATUS"]
            sid = c.start("demo.sleep", params={"seconds": 600})
            wait_until(lambda: c.session(sid)["status"] == "running", timeout=60, what="running")
            runner_env = Path(f"/proc/{c.session(sid)['pid']}/environ").read_bytes()
            assert b"NOTIFY_SOCKET" not in runner_env and b"WATCHDOG_USEC" not in runner_env
        wait_until(lambda: any("1 session running" in m["STATUS"] for m in notify_socket.having("STATUS")),
                   timeout=30, what="STATUS with the running session")
        wait_until(lambda: len(notify_socket.having("WATCHDOG")) >= 3, timeout=30, what="3 watchdog pings")
        pings = [t for t, m in notify_socket.messages if "WATCHDOG" in m]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        print(f"watchdog pings every {sum(gaps) / len(gaps):.2f}s (WATCHDOG_USEC 1 s: every third)")
        assert all(m["WATCHDOG"] == "1" for m in notify_socket.having("WATCHDOG"))
    finally:
        assert d.stop() == 0
        kill_runners(isolated_env)
    stopping = notify_socket.having("STOPPING")
    assert stopping and "1 sessions keep running" in stopping[0]["STATUS"]


def test_abstract_notify_socket(isolated_env: Path) -> None:
    """A NOTIFY_SOCKET starting with '@' names the abstract namespace (as systemd passes it); READY=1 arrives."""
    listener = NotifyListener(f"@labd-test-{secrets.token_hex(6)}")
    try:
        with running_daemon(isolated_env, extra_env={"NOTIFY_SOCKET": listener.address}):
            wait_until(lambda: listener.having("READY"), timeout=30, what="READY=1")
    finally:
        listener.close()


def test_pending_migration_asks_systemd_for_start_time(isolated_env: Path, notify_socket: NotifyListener) -> None:
    """A daemon whose store needs a migration (left by an older labd) sends EXTEND_TIMEOUT_USEC (an hour) over
    NOTIFY_SOCKET before it migrates, and READY=1 after: systemd's start timeout must not kill a long migration
    midway (it would roll back and start over at every restart). A store already up to date asks for nothing."""
    import sqlalchemy as sa

    from labd.store.db import downgrade

    with running_daemon(isolated_env):
        pass  # creates the store at the newest revision
    engine = sa.create_engine(f"sqlite:///{isolated_env / 'labd.db'}")
    downgrade(engine, "0011_record_counts")  # as a labd from before cost_sums left it
    engine.dispose()
    for pending in (True, False):
        notify_socket.messages.clear()
        with running_daemon(isolated_env, extra_env={"NOTIFY_SOCKET": notify_socket.address}):
            wait_until(lambda: notify_socket.having("READY"), timeout=60, what="READY=1")
        fields = [m for _, m in notify_socket.messages]
        extend = [i for i, m in enumerate(fields) if "EXTEND_TIMEOUT_USEC" in m]
        if pending:
            assert len(extend) == 1, fields
            assert fields[extend[0]]["EXTEND_TIMEOUT_USEC"] == str(3_600_000_000)
            assert "migrating" in fields[extend[0]]["STATUS"]
            assert extend[0] < next(i for i, m in enumerate(fields) if "READY" in m), "asked after it was ready"
        else:
            assert extend == [], f"no migration was pending, yet the daemon asked for time: {fields}"


def test_watchdog_withheld_while_unhealthy(notify_socket: NotifyListener) -> None:
    """The heartbeat pings only while told the daemon is healthy, and says why in STATUS when not; a trouble the
    daemon waits out (its store down) is shown in STATUS without withholding pings."""
    from labd.daemon.systemd import Heartbeat, Notifier

    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"}
    notifier = Notifier(env)
    assert env == {}, "the notifier must take its variables out of the environment children inherit"
    hb = Heartbeat(notifier, status_every=0.0)
    for _ in range(5):
        hb.tick(False, 0, 0, "ingest stuck for 12s")
        time.sleep(0.06)
    wait_until(lambda: notify_socket.having("STATUS"), what="STATUS")
    assert not notify_socket.having("WATCHDOG") and hb.withheld >= 2
    assert "UNHEALTHY: ingest stuck" in notify_socket.having("STATUS")[-1]["STATUS"]
    hb.tick(True, 2, 0)
    wait_until(lambda: notify_socket.having("WATCHDOG"), what="a ping once healthy")
    # a store that cannot be written is waited out (pings go on) but shown (STATUS said nothing of it: admin review)
    hb.tick(True, 2, 0, "", "store NOT WRITABLE for 4s: connection refused")
    wait_until(lambda: "store NOT WRITABLE" in notify_socket.having("STATUS")[-1]["STATUS"], what="the store in STATUS")
    assert "UNHEALTHY" not in notify_socket.having("STATUS")[-1]["STATUS"]
    notifier.close()


def test_journald_priorities(isolated_env: Path) -> None:
    """When stderr is the journal stream (JOURNAL_STREAM names its device:inode), each log line starts with
    its syslog priority, <6> for info and <4> for warnings; otherwise lines are plain JSON."""
    d = DaemonProc(isolated_env)
    d.log_path.parent.mkdir(parents=True, exist_ok=True)
    d.log_path.touch()
    st = d.log_path.stat()
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    d.start()
    try:
        with d.client() as c:
            c.ping()
    finally:
        d.stop()
    lines = [line for line in d.log().splitlines() if line.strip()]
    serving = next(line for line in lines if "labd serving" in line)
    assert serving.startswith('<6>{"'), serving
    assert json.loads(serving[3:])["level"] == "info"
    with running_daemon(isolated_env) as plain:
        pass
    records = [line for line in plain.log().splitlines() if line.startswith(("{", "<"))]
    assert records and all(line.startswith("{") for line in records), records


# ---- labd service install|status|uninstall --------------------------------------------------------------------
def test_service_install_writes_a_user_unit_for_this_interpreter(isolated_env: Path, tmp_path: Path) -> None:
    """`labd service install` writes ~/.config/systemd/user/labd.service running *this* interpreter with the
    home in use, as a Type=notify unit with a watchdog and KillMode=process, explains lingering; `status`
    recognises it; `uninstall` removes it."""
    unit = tmp_path / ".config" / "systemd" / "user" / "labd.service"
    # never the real user manager: the isolated XDG_RUNTIME_DIR has no bus, and no session bus address either
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    r = _labd("service", "install", "--drain", env=env)
    assert r.returncode == 0, r.stderr
    assert f"wrote {unit}" in r.stdout and "loginctl enable-linger" in r.stdout
    text = unit.read_text()
    assert f"\nExecStart={sys.executable} -P -m labd --home {isolated_env} serve --log-format json --drain\n" in text
    for line in ("Type=notify", "WatchdogSec=60", "KillMode=process", "WantedBy=default.target"):
        assert f"\n{line}\n" in text
    assert "LABD_DB" not in r.stderr
    again = _labd("service", "install", "--drain", env={**env, "LABD_DB": "sqlite:////srv/labd/other.db"})
    assert "unchanged" in again.stdout and "sqlite:" not in unit.read_text()
    # the store in the environment is not the service's: said, as the unit leaves it out (it may hold a password)
    assert "LABD_DB is set here but the service does not get it" in again.stderr
    st = _labd("service", "status", env=env)
    assert st.returncode == 0 and str(unit) in st.stdout and "not this interpreter" not in st.stdout, st.stdout
    r = _labd("service", "uninstall", env=env)
    assert r.returncode == 0 and not unit.exists()
    assert _labd("service", "status", env=env).returncode == 1


def test_service_install_for_another_home_is_refused_unless_replace(isolated_env: Path, tmp_path: Path) -> None:
    """There is one labd unit per user: `labd service install` for a second home refused (exit 2, naming the home the
    unit serves and `--replace`), the unit unchanged; `service status` from the second home says the unit serves
    another; `--replace` switches it, saying which home it served. Before, the second install silently replaced the
    unit ("updated") and the first home lost its service."""
    unit = tmp_path / ".config" / "systemd" / "user" / "labd.service"
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    assert _labd("service", "install", env=env).returncode == 0
    first = unit.read_text()
    other = tmp_path / "other home"
    env2 = {**env, "LABD_HOME": str(other)}
    r = _labd("service", "install", env=env2)
    assert r.returncode == 2 and str(isolated_env) in r.stderr and "--replace" in r.stderr, r
    assert unit.read_text() == first
    st = _labd("service", "status", env=env2)
    assert f"home:     {isolated_env}  (not this home, {other}" in st.stdout, st.stdout
    assert "not this home" not in _labd("service", "status", env=env).stdout
    r = _labd("service", "install", "--replace", env=env2)
    assert r.returncode == 0 and f"(it served {isolated_env} before)" in r.stdout, r
    assert f"--home \"{other}\" serve" in unit.read_text()


def test_service_install_enable_without_a_user_manager_fails_and_says_so(isolated_env: Path, tmp_path: Path) -> None:
    """`labd service install --enable` where no systemd user manager answers (no bus) writes the unit but exits 2 and
    says on stderr that the service was neither enabled nor started (it exited 0, as if labd now ran as a service)."""
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    r = _labd("service", "install", "--enable", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not enabled, not started" in r.stderr and "systemctl --user enable --now labd.service" in r.stderr
    assert (tmp_path / ".config" / "systemd" / "user" / "labd.service").exists()


def test_generated_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The generated unit, including a home path with a space and a '%', is valid for systemd: `systemd-analyze
    --user verify` accepts it without a single warning."""
    from labd.frontends.service import render_unit

    exe = shutil.which("systemd-analyze")
    if exe is None:
        print("SKIPPED: systemd-analyze not installed")
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "labd.service"
    unit.write_text(render_unit(sys.executable, str(tmp_path / "my home 100%")))
    r = subprocess.run([exe, "--user", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # newer systemd versions note that KillMode=process is discouraged: it is our deliberate drain policy
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if line.strip() and "KillMode" not in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr
    broken = unit.read_text().replace("Type=notify", "Type=notfy")
    unit.write_text(broken)
    r = subprocess.run([exe, "--user", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "notfy" in r.stdout + r.stderr, "verify did not look at the unit at all"


def test_scripts_labd_service_is_the_generated_unit() -> None:
    """scripts/labd.service is what `labd service install` generates (for an example virtualenv): one
    source of truth, never a hand-edited copy that drifts."""
    from labd.frontends.service import render_unit

    example = (REPO / "scripts" / "labd.service").read_text()
    assert example == render_unit("/opt/labd/.venv/bin/python")


def test_a_request_refused_no_daemon_is_not_delivered_to_the_next_daemon(daemon: DaemonProc) -> None:
    """A ``session.start`` refused with ``no_daemon`` (the daemon stopped) never runs: the client's socket kept the
    unsent request queued and libzmq delivered it to the next daemon at the same endpoint, which ran a session the
    user had been told had failed (and had started again: twice). Here the old client, pointed at the new daemon
    without a new socket (white box: as libzmq's reconnection would carry it), starts a marker session after a
    ping: the daemon reads one connection's requests in order, so a delivered ghost would be created first."""
    from labd.ipc import LabdError
    from labd.ipc.connection import read_connection_file

    c = daemon.client(timeout=60.0)
    try:
        c.ping()
        daemon.stop()
        with pytest.raises(LabdError) as err:
            c.start("demo.count", params={"n": 1}, name="ghost")
        assert err.value.code == "no_daemon", err.value
        daemon.start()
        c.info = read_connection_file(c.layout)  # the new daemon (same key and endpoint), on the same socket
        c.ping()
        marker = c.start("demo.count", params={"n": 1}, name="marker")
        names = {s["name"] for s in c.sessions(limit=100)}
        assert "marker" in names and "ghost" not in names, names
        c.wait(marker, timeout=60)
    finally:
        c.close()


def test_request_fails_fast_when_the_daemon_dies_meanwhile(daemon: DaemonProc) -> None:
    """A client waiting for a reply notices that the daemon died (SIGSTOP, then SIGKILL: it never answers)
    and fails with `no_daemon` well before its reply timeout."""
    from labd.ipc import LabdError

    with daemon.client(timeout=60.0) as c:
        c.ping()
        os.kill(daemon.proc.pid, signal.SIGSTOP)  # the request below is queued but never answered
        threading.Timer(1.0, daemon.kill9).start()
        t0 = time.monotonic()
        with pytest.raises(LabdError) as err:
            c.ping()
        elapsed = time.monotonic() - t0
    print(f"daemon death noticed {elapsed:.2f}s into the request (reply timeout 60 s)")
    assert err.value.code == "no_daemon" and "stopped before it replied" in err.value.message
    assert elapsed < 30.0
