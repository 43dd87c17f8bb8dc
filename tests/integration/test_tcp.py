"""TCP with CurveZMQ: a daemon started with --listen serves remote clients whose keys it issued (control and the
live event stream, over real TCP on loopback), refuses clients with unknown keys or no encryption, and refuses
a non-TCP listen address; revoking a client locks it out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from tests.conftest import module_daemon_on, pointed_at, running_daemon, wait_until

pytestmark = pytest.mark.timeout(120)


def _port() -> int:
    with socket.socket() as s:  # two consecutive free ports: control and events
        for _ in range(50):
            s2 = socket.socket()
            try:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                s2.bind(("127.0.0.1", port + 1))
                return int(port)
            except OSError:
                s.close()
                s = socket.socket()
            finally:
                s2.close()
    raise RuntimeError("no free port pair")


@pytest.fixture
def tcp_daemon(isolated_env: Path):
    """A daemon of the test's own with --listen: (daemon, its control port)."""
    port = _port()
    with running_daemon(isolated_env, args=["--listen", f"tcp://127.0.0.1:{port}"]) as d:
        yield d, port


@pytest.fixture(scope="module")
def module_tcp_daemon(request: pytest.FixtureRequest):
    """One daemon with --listen shared by the module's tests that add remote clients of their own names."""
    port = _port()
    with module_daemon_on(request, args=["--listen", f"tcp://127.0.0.1:{port}"]) as d:
        yield d, port


@pytest.fixture
def shared_tcp_daemon(module_tcp_daemon, monkeypatch: pytest.MonkeyPatch):
    """The module's shared --listen daemon, pointed at (``pointed_at``): (daemon, its control port)."""
    pointed_at(module_tcp_daemon[0], monkeypatch)
    return module_tcp_daemon


def _write(path: Path, data: dict) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return path


def test_a_remote_client_controls_and_follows_over_tcp(tcp_daemon, tmp_path: Path) -> None:
    """`remote.add` issues a connection file; a client using it (no access to the local runtime dir) starts a
    session and follows its output live over TCP: the gateway relays the live tail (a SUB on the TCP event port
    receives the session's output as it is printed; `follow` alone would also pass on its store fallback). (A
    daemon of its own: `remote.list` is the daemon's whole list of clients.)"""
    from labd.ipc import Client
    from labd.ipc.connection import events_socket

    d, port = tcp_daemon
    with d.client() as local:
        conn = local.request("remote.add", name="laptop")["connection"]
        assert conn["control"] == f"tcp://127.0.0.1:{port}" and conn["server_public"]
        assert local.request("remote.list")["clients"] == ["laptop"]
    path = _write(tmp_path / "laptop.labd.json", conn)
    with Client(connection_file=path, timeout=10) as remote:
        sid = remote.start("demo.count", params={"n": 3})
        texts = [e["payload"]["text"] for e in remote.follow(sid, timeout=60) if e["kind"] == "output"]
        assert "".join(texts).count("count") == 3
        assert remote.session(sid)["status"] == "completed"
        sub = events_socket(zmq.Context.instance(), remote.info)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"session.")
            sub.connect(remote.info.events)
            live = remote.start("demo.count", params={"n": 400, "delay": 0.02})
            topic = f"session.{live}".encode()
            got = wait_until(lambda: sub.poll(100) and sub.recv_multipart()[0] == topic, timeout=30, interval=0,
                             what="a live message of the session over TCP")
            assert got
        finally:
            sub.close(0)
        remote.kill(live)


def test_unknown_key_or_plain_tcp_gets_nothing(shared_tcp_daemon, tmp_path: Path) -> None:
    """A client with a keypair the daemon never issued, or one that does not encrypt, gets no reply; a revoked
    client is locked out too."""
    from labd.ipc import Client, LabdError

    d, port = shared_tcp_daemon
    with d.client() as local:
        conn = local.request("remote.add", name="box")["connection"]
    pub, sec = zmq.curve_keypair()
    forged = _write(tmp_path / "forged.json", {**conn, "client_public": pub.decode(), "client_secret": sec.decode()})
    with Client(connection_file=forged, timeout=2) as c, pytest.raises(LabdError) as err:
        c.ping()
    assert err.value.code == "timeout"
    assert str(forged) in err.value.message and "revoked or unknown client key" in err.value.message
    plain = _write(tmp_path / "plain.json", {k: v for k, v in conn.items() if not k.startswith(("server_", "client_"))})
    with Client(connection_file=plain, timeout=2) as c, pytest.raises(LabdError) as err:
        c.ping()
    assert err.value.code == "timeout"
    good = _write(tmp_path / "good.json", conn)
    with Client(connection_file=good, timeout=10) as c:
        assert c.ping()["pid"] == d.proc.pid
    with d.client() as local:
        local.request("remote.remove", name="box")
    with Client(connection_file=good, timeout=2) as c, pytest.raises(LabdError) as err:
        c.ping()
    assert err.value.code == "timeout" and "revoked or unknown client key" in err.value.message, err.value


def test_a_revoked_client_already_connected_is_cut_off_and_others_go_on(shared_tcp_daemon, tmp_path: Path) -> None:
    """A remote client connected before ``remote.remove`` gets no answer on that same connection afterwards (it went
    on starting sessions for minutes: the authenticator sees only new connections), while another remote client,
    also connected before, is answered again (it reconnects and is authenticated anew)."""
    from labd.ipc import Client, LabdError

    d, _port = shared_tcp_daemon
    with d.client() as local:
        gone = _write(tmp_path / "gone.json", local.request("remote.add", name="gone")["connection"])
        kept = _write(tmp_path / "kept.json", local.request("remote.add", name="kept")["connection"])
    with Client(connection_file=gone, timeout=3) as revoked, Client(connection_file=kept, timeout=10) as other:
        assert revoked.ping()["pid"] == other.ping()["pid"] == d.proc.pid
        with d.client() as local:  # answered once the connections are dropped and the ports listen again
            assert local.request("remote.remove", name="gone") == {"name": "gone", "removed": True,
                                                                    "reconnectable": True}
        with pytest.raises(LabdError) as err:
            revoked.start("demo.count", params={"n": 1})
        assert err.value.code == "timeout", err.value
        assert wait_until(lambda: other.ping()["pid"] == d.proc.pid, timeout=30, what="the other client answered")
    with d.client() as local:
        assert local.request("remote.remove", name="kept")["reconnectable"] is True


def test_cli_remote_add_and_connect(shared_tcp_daemon, tmp_path: Path) -> None:
    """`labd remote add` writes a private connection file; `labd --connect FILE ps` works with it."""
    d, _ = shared_tcp_daemon
    env = {**os.environ, "LABD_HOME": str(d.home)}
    out = subprocess.run([sys.executable, "-m", "labd", "remote", "add", "ws1", "-o", str(tmp_path / "ws1.json")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ws1.json").stat().st_mode & 0o777 == 0o600
    other = {k: v for k, v in os.environ.items() if k not in ("LABD_HOME",)}
    other["XDG_RUNTIME_DIR"] = str(tmp_path / "elsewhere")  # no local daemon to find: only the file
    out = subprocess.run([sys.executable, "-m", "labd", "--connect", str(tmp_path / "ws1.json"), "status"],
                         capture_output=True, text=True, env=other, timeout=60)
    assert out.returncode == 0, out.stderr


def test_cli_remote_add_that_cannot_write_its_file_authorises_no_client(shared_tcp_daemon, tmp_path: Path) -> None:
    """`labd remote add NAME -o FILE` where FILE exists, or cannot be created (no such directory), is one `labd:` line
    with exit 2, leaves an existing FILE as it was, and authorises no client (the name stays free). Before: a
    FileExistsError / FileNotFoundError traceback *after* the daemon had issued the key, which stayed authorised with
    no one holding it, and the name was refused (`exists`) from then on."""
    d, _ = shared_tcp_daemon
    env = {**os.environ, "LABD_HOME": str(d.home)}
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    for name, target, why in (("ws-taken", taken, "it exists (choose another with --output)"),
                              ("ws-nodir", tmp_path / "no" / "such.json", "No such file or directory")):
        out = subprocess.run([sys.executable, "-m", "labd", "remote", "add", name, "-o", str(target)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 2 and out.stderr.splitlines() == [
            f"labd: cannot write the connection file {target}: {why}; no client was authorised"], out.stderr
    assert taken.read_text() == "mine"
    out = subprocess.run([sys.executable, "-m", "labd", "remote", "add", "a/b"], capture_output=True, text=True,
                         env=env, timeout=60, cwd=tmp_path)  # a name the daemon refuses: said as such, no file made
    assert out.returncode == 2 and out.stderr.startswith("labd: a remote client's name must be"), out.stderr
    with d.client() as c:
        assert not {"ws-taken", "ws-nodir"} & set(c.request("remote.list")["clients"])


def test_a_connection_file_damaged_by_hand_is_one_line_not_a_traceback(shared_tcp_daemon, tmp_path: Path) -> None:
    """A client's connection file edited by hand -- a key that is not hex, an endpoint libzmq refuses for control or
    for the live events -- is one `labd: ... [bad_connection_file]` line with exit 2 from the CLI, and LabdError
    `bad_connection_file` from the SDK (`follow` included); before: ValueError / ZMQError tracebacks."""
    from labd.ipc import Client, LabdError

    d, _ = shared_tcp_daemon
    with d.client() as local:
        good = local.request("remote.add", name="handedit")["connection"]
        sid = local.start("demo.count", params={"n": 1})
        local.wait(sid, timeout=60)
    other = {k: v for k, v in os.environ.items() if k != "LABD_HOME"}
    other["XDG_RUNTIME_DIR"] = str(tmp_path / "elsewhere")
    try:
        for name, change, command in (("key", {"key": "zz"}, ["status"]),
                                      ("control", {"control": "tcp://no host:99999"}, ["status"]),
                                      ("events", {"events": "tcp://no host:99999"}, ["logs", "-f", sid])):
            path = _write(tmp_path / f"{name}.json", {**good, **change})
            out = subprocess.run([sys.executable, "-m", "labd", "--connect", str(path), *command],
                                 capture_output=True, text=True, env=other, timeout=60)
            lines = out.stderr.splitlines()
            assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("labd: "), out.stderr
            assert lines[0].endswith("[bad_connection_file]"), out.stderr
        with Client(connection_file=tmp_path / "events.json", timeout=10) as c, pytest.raises(LabdError) as err:
            list(c.follow(sid, timeout=30))
        assert err.value.code == "bad_connection_file"
    finally:
        with d.client() as local:
            local.request("remote.remove", name="handedit")


def test_listen_without_tcp_is_refused(isolated_env: Path) -> None:
    """Only tcp:// is served remotely (and always with CURVE): another scheme stops the daemon with a message."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-m", "labd", "--home", str(isolated_env), "serve", "--listen",
                          "ipc:///tmp/x"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "tcp://" in out.stderr


def test_remote_add_without_listen_is_a_clear_error(daemon) -> None:
    """A daemon without --listen answers remote.add with `no_tcp`."""
    from labd.ipc import LabdError

    with daemon.client() as c, pytest.raises(LabdError) as err:
        c.request("remote.add", name="x")
    assert err.value.code == "no_tcp"
