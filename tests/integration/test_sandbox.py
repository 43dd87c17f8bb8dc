"""Executed code is confined: hostile programs run through an agent's ``run_code`` tool try every escape
listed in issue 8 and each is refused, under bubblewrap and under Landlock (+ seccomp) alike.

What is checked on the host, not only by what the program says: files it tried to write outside its work
directory do not exist, the daemon's key is unchanged, loopback listeners received nothing.
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import psutil
import pytest

from labd.ipc.paths import layout_for
from tests.conftest import running_daemon, wait_until

pytestmark = pytest.mark.fault

MECHANISMS = ["bwrap", "landlock"]


def _attempt(name: str, action: str) -> str:
    """A program that prints ``LEAK <name>`` if ``action`` succeeds and ``DENIED <name>`` if it raises."""
    return (f"import os, signal, socket\ntry:\n{textwrap.indent(action, '    ')}\n    print('LEAK {name}')\n"
            f"except OSError as exc:\n    print('DENIED {name}', type(exc).__name__)\n")


def _configure(home: Path, **settings: object) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[sandbox]"] + [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                             for k, v in settings.items()]
    (home / "config.toml").write_text("\n".join(lines).replace("'", '"') + "\n")


def _require_mechanism(c, mechanism: str) -> dict:
    sb = c.status()["sandbox"]
    if sb["mechanism"] != mechanism:
        print(f"SKIP {mechanism}: {sb['reasons']}")
        pytest.skip(f"{mechanism} does not work on this machine: {'; '.join(sb['reasons'])}")
    return sb


def _other_session_file(c) -> Path:
    """A file written by another (real, finished) session into its own work directory."""
    sid = c.start("labd_testflows:hostile_code", params={"programs": ["open('secret.txt', 'w').write('theirs')"]})
    assert c.wait(sid, timeout=90)["status"] == "completed"
    path = Path(c.session(sid)["workdir"]) / "secret.txt"
    assert path.read_text() == "theirs"
    return path


def _outputs(c, sid: str) -> list[str]:
    return [e["payload"]["output"] for e in c.history(sid, kinds=["code.execution"])]


class _Listeners:
    """A TCP and a UDP listener on loopback; ``received`` says whether anything reached them."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)

    def received(self) -> list[str]:
        got = []
        try:
            self.tcp.accept()[0].close()
            got.append("tcp")
        except BlockingIOError:
            pass
        try:
            self.udp.recvfrom(100)
            got.append("udp")
        except BlockingIOError:
            pass
        return got

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_hostile_code_cannot_escape(isolated_env: Path, tmp_path: Path, mechanism: str) -> None:
    """Programs an agent runs cannot read labd's key, database, connection file, runtime directory,
    another session's files, ~/.ssh/id_rsa, /proc/<daemon>/environ or their runner's memory; cannot signal
    the daemon nor set its limits or their runner's (prlimit: one second of CPU killed either); cannot
    write outside their work directory; cannot reach a loopback TCP or UDP listener. A control program
    shows that they do run and may write their own work directory."""
    home = isolated_env
    _configure(home, mechanism=mechanism)
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("-----BEGIN FAKE PRIVATE KEY-----\n")
    outside = tmp_path / "written-outside.txt"
    net = _Listeners()
    try:
        with running_daemon(home) as d, d.client(timeout=60) as c:
            _require_mechanism(c, mechanism)
            other = _other_session_file(c)
            daemon_pid = c.status()["pid"]
            key_before = (home / "daemon.key").read_text()
            nofile_before = psutil.Process(daemon_pid).rlimit(psutil.RLIMIT_NOFILE)
            layout = layout_for(home)
            tcp_port, udp_port = net.tcp.getsockname()[1], net.udp.getsockname()[1]
            attempts = {
                "daemon_key": f"open({str(home / 'daemon.key')!r}).read()",
                "database": f"open({str(home / 'labd.db')!r}, 'rb').read(16)",
                "connection_file": f"open({str(layout.connection_file)!r}).read()",
                "runtime_dir": f"os.listdir({str(layout.runtime_dir)!r})",
                "other_session": f"open({str(other)!r}).read()",
                "ssh_key": f"open({str(ssh / 'id_rsa')!r}).read()",
                "daemon_environ": f"open('/proc/{daemon_pid}/environ', 'rb').read()",
                "signal_daemon": f"os.kill({daemon_pid}, 0)",
                # another process's limits, one less file: an RLIMIT_CPU of 1 s this way killed the daemon
                # nor lower its priority (docs/security.md says a runner can, executed code cannot)
                "renice_daemon": f"os.setpriority(os.PRIO_PROCESS, {daemon_pid}, 19)",
                "pin_daemon": f"os.sched_setaffinity({daemon_pid}, {{0}})",
                "prlimit_daemon": f"import resource\nn = resource.RLIMIT_NOFILE\nsoft, hard = resource.prlimit("
                                  f"{daemon_pid}, n)\nresource.prlimit({daemon_pid}, n, (soft - 1, hard))",
                "tcp": f"socket.create_connection(('127.0.0.1', {tcp_port}), timeout=3).close()",
            }
            if mechanism == "landlock":  # the runner (which holds its session's key) is the parent here; under
                # bwrap the parent is bwrap's own init inside the PID namespace and the runner is not visible
                attempts["runner_memory"] = "open(f'/proc/{os.getppid()}/mem', 'rb').read(1)"
                attempts["prlimit_runner"] = ("import resource\nresource.prlimit(os.getppid(), resource.RLIMIT_CPU, "
                                              "(1, 1))")
            programs = [_attempt(n, a) for n, a in attempts.items()]
            # Checked on the host: whatever these programs believe, nothing may reach the real files / ports.
            programs += [
                _attempt("write_outside", f"open({str(outside)!r}, 'w').write('x')"),
                _attempt("overwrite_key", f"open({str(home / 'daemon.key')!r}, 'w').write('0' * 64)"),
                _attempt("udp", f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', "
                                f"{udp_port}))"),
                "open('mine.txt', 'w').write('ok'); print('CONTROL', open('mine.txt').read())",
            ]
            sid = c.start("labd_testflows:hostile_code", params={"programs": programs})
            final = c.wait(sid, timeout=90)
            assert final["status"] == "completed", final.get("reason")
            outputs = _outputs(c, sid)
            assert len(outputs) == len(programs), outputs
            report = "\n".join(outputs)
            print(f"[{mechanism}]\n{report}")
            for name in attempts:
                assert f"DENIED {name}" in report, f"{name} was not refused under {mechanism}:\n{report}"
            assert "CONTROL ok" in report
            work = Path(c.session(sid)["workdir"])
            assert (work / "mine.txt").read_text() == "ok"
            assert not outside.exists(), "a write outside the work directory reached the host"
            assert (home / "daemon.key").read_text() == key_before
            assert psutil.Process(daemon_pid).rlimit(psutil.RLIMIT_NOFILE) == nofile_before
            assert net.received() == [], "executed code reached a loopback listener"
            created = next(c.history(sid, kinds=["session.created"]))["payload"]
            assert created["sandbox"]["mechanism"] == mechanism and created["sandbox"]["network"] is False
    finally:
        net.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_network_on_lets_executed_code_connect(isolated_env: Path, mechanism: str) -> None:
    """``network: on`` for a session lifts only the network restriction: its code reaches a loopback
    listener, while labd's key stays unreadable."""
    home = isolated_env
    _configure(home, mechanism=mechanism)
    net = _Listeners()
    try:
        with running_daemon(home) as d, d.client(timeout=60) as c:
            _require_mechanism(c, mechanism)
            port = net.tcp.getsockname()[1]
            programs = [_attempt("tcp", f"socket.create_connection(('127.0.0.1', {port}), timeout=5).close()"),
                        _attempt("daemon_key", f"open({str(home / 'daemon.key')!r}).read()")]
            sid = c.start("labd_testflows:hostile_code", params={"programs": programs}, network=True)
            assert c.wait(sid, timeout=90)["status"] == "completed"
            report = "\n".join(_outputs(c, sid))
            assert "LEAK tcp" in report and "DENIED daemon_key" in report, report
            assert wait_until(lambda: "tcp" in net.received(), timeout=10, what="the connection")
    finally:
        net.close()


def test_required_sandbox_refuses_to_run_code_without_one(isolated_env: Path) -> None:
    """With no sandbox (``mechanism = "none"``) and ``require = true``: the daemon says so at start (log,
    ``labd status``, the session's record) and ``run_code`` refuses to run anything."""
    home = isolated_env
    _configure(home, mechanism="none", require=True)
    marker = home / "ran.txt"
    with running_daemon(home) as d, d.client(timeout=60) as c:
        sb = c.status()["sandbox"]
        assert (sb["level"], sb["mechanism"], sb["require"]) == ("none", "none", True)
        assert "code execution is refused" in d.log()
        sid = c.start("labd_testflows:hostile_code", params={"programs": [f"open({str(marker)!r}, 'w')"]})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        ex = next(c.history(sid, kinds=["code.execution"]))["payload"]
        assert ex["exit_code"] == 126 and ex["output"].startswith("not run:"), ex
        assert not marker.exists()
        assert next(c.history(sid, kinds=["session.created"]))["payload"]["sandbox"]["level"] == "none"


def test_status_reports_the_sandbox_level(daemon) -> None:
    """``daemon.status`` carries the probed sandbox: level, mechanism, reasons, the runner's own
    confinement, the network default, and whether the daemon (so every runner) runs as root."""
    with daemon.client() as c:
        sb = c.status()["sandbox"]
    assert sb["level"] in ("full", "partial", "none")
    assert sb["mechanism"] in ("bwrap", "landlock", "none")
    assert isinstance(sb["reasons"], list) and sb["network_default"] is False
    assert sb["runner"] == "landlock" or sb["runner"].startswith("off")
    assert sb["as_root"] is (os.geteuid() == 0)  # the daemon runs as the test's user
    print("sandbox:", sb)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_home_outside_tmp_is_hidden_too(tmp_path: Path, mechanism: str) -> None:
    """With labd's home outside /tmp (bwrap then covers it with a read-only tmpfs and binds the work
    directory back, instead of relying on its private /tmp), executed code still cannot read the key, the
    database or another session, cannot write into the home, and can write its work directory."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="labd-sbx-", dir="/var/tmp")) / "home"
    try:
        _configure(home, mechanism=mechanism)
        planted = home / "planted.txt"
        with running_daemon(home) as d, d.client(timeout=60) as c:
            _require_mechanism(c, mechanism)
            other = _other_session_file(c)
            attempts = {"daemon_key": f"open({str(home / 'daemon.key')!r}).read()",
                        "database": f"open({str(home / 'labd.db')!r}, 'rb').read(16)",
                        "other_session": f"open({str(other)!r}).read()"}
            programs = [_attempt(n, a) for n, a in attempts.items()]
            programs += [_attempt("plant", f"open({str(planted)!r}, 'w').write('x')"),
                         "open('mine.txt', 'w').write('ok'); print('CONTROL', open('mine.txt').read())"]
            sid = c.start("labd_testflows:hostile_code", params={"programs": programs})
            assert c.wait(sid, timeout=90)["status"] == "completed"
            report = "\n".join(_outputs(c, sid))
            print(f"[{mechanism}, home {home}]\n{report}")
            assert all(f"DENIED {n}" in report for n in attempts), report
            assert "DENIED plant" in report and not planted.exists()
            assert "CONTROL ok" in report
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_another_labd_home_of_the_user_is_hidden_from_sessions(isolated_env: Path, tmp_path: Path,
                                                              mechanism: str) -> None:
    """A second home of the same user, served by a daemon started *after* this one: neither the session's runner
    (workflow code; confined under Landlock only: bwrap cannot start under a confined runner, docs/security.md) nor
    the code it executes can read that home's ``daemon.key`` or database. Before, only the
    session's own home was hidden: an attack review read the other key from executed code and, through the other
    daemon's control socket, started a session there, unconfined and with the network (daemon/homes.py)."""
    home, other = isolated_env, tmp_path / "other-home"
    _configure(home, mechanism=mechanism)
    with running_daemon(home) as d, d.client(timeout=60) as c:
        _require_mechanism(c, mechanism)
        with running_daemon(other):  # registers itself; this daemon's next sessions hide it
            secrets = [str(other / "daemon.key"), str(other / "labd.db")]
            sid = c.start("labd_testflows:runner_reads", params={"paths": secrets})
            assert c.wait(sid, timeout=60)["status"] == "completed"
            read = next(c.history(sid, kinds=["session.finished"]))["payload"]["result"]
            if mechanism == "landlock":
                assert all(read[p] == "PermissionError" for p in secrets), read
                # nor can it rewrite the registry of homes, which decides what the next session hides: a runner that
                # left the other home out of it had that home's key open to the next session (an attack review)
                from labd.daemon.homes import registry_path

                registry = registry_path()
                listed = registry.read_text()
                sid = c.start("labd_testflows:runner_writes", params={"paths": [str(registry)]})
                assert c.wait(sid, timeout=60)["status"] == "completed"
                wrote = next(c.history(sid, kinds=["session.finished"]))["payload"]["result"]
                assert wrote == {str(registry): "PermissionError"} and registry.read_text() == listed, wrote
            programs = [_attempt("other_key", f"open({secrets[0]!r}).read()"),
                        _attempt("other_db", f"open({secrets[1]!r}, 'rb').read(16)"),
                        "open('mine.txt', 'w').write('ok'); print('CONTROL', open('mine.txt').read())"]
            sid = c.start("labd_testflows:hostile_code", params={"programs": programs})
            assert c.wait(sid, timeout=90)["status"] == "completed"
            report = "\n".join(_outputs(c, sid))
            assert "DENIED other_key" in report and "DENIED other_db" in report and "CONTROL ok" in report, report


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_the_users_runtime_directory_is_hidden_and_under_bwrap_its_sockets_unreachable(
        isolated_env: Path, mechanism: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$XDG_RUNTIME_DIR`` (here outside /tmp, as systemd's /run/user/<uid>: bubblewrap's private /tmp hides the
    tests' own) holds the systemd user bus, from which ``systemd-run --user`` starts anything, unconfined: executed
    code cannot see what is in it, and under bubblewrap (a tmpfs over it) cannot connect to a socket in it; before,
    bubblewrap hid only labd's part of it. Under Landlock connecting is not governed (docs/security.md, "Not
    closed"): that case is only printed."""
    import shutil
    import socket as _socket
    import tempfile

    home = isolated_env
    _configure(home, mechanism=mechanism)
    runtime = Path(tempfile.mkdtemp(prefix="lr-", dir="/var/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    bus = runtime / "bus"
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    listener.bind(str(bus))
    listener.listen(4)
    try:
        with running_daemon(home) as d, d.client(timeout=60) as c:
            _require_mechanism(c, mechanism)
            programs = [_attempt("list_runtime", f"assert 'bus' in os.listdir({str(bus.parent)!r}), 'not seen'")
                        .replace("except OSError", "except (OSError, AssertionError)"),
                        _attempt("connect_bus", "s = socket.socket(socket.AF_UNIX)\n"
                                                f"s.connect({str(bus)!r})\ns.close()")]
            sid = c.start("labd_testflows:hostile_code", params={"programs": programs})
            assert c.wait(sid, timeout=90)["status"] == "completed"
            report = "\n".join(_outputs(c, sid))
            print(f"[{mechanism}]\n{report}")
            assert "DENIED list_runtime" in report, report
            if mechanism == "bwrap":
                assert "DENIED connect_bus" in report, report
    finally:
        listener.close()
        shutil.rmtree(runtime, ignore_errors=True)
