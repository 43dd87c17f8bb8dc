"""Per-session credentials: a runner holds only its own session's key, can sign for nothing else, and
cannot be cut off from the daemon by another process that takes its routing id (issue 8, items 1 and 13)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
import zmq

from labd.ipc.paths import layout_for
from labd.ipc.signing import derive_key
from labd.ipc.wire import Codec
from tests.conftest import runner_pid, wait_until

pytestmark = pytest.mark.fault


def _memory_contains(pid: int, needles: list[bytes]) -> set[bytes]:
    """Which of ``needles`` occur anywhere in the readable memory of process ``pid``."""
    found: set[bytes] = set()
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", 0)  # noqa: SIM115 - closed below
    except PermissionError as exc:
        print(f"SKIP memory scan: {exc}")
        pytest.skip(f"cannot read /proc/{pid}/mem here ({exc})")
    with mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if not perms.startswith("r") or line.endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found |= {n for n in needles if n in data}
    return found


def test_the_daemon_key_never_reaches_a_runner_or_the_template(shared_daemon) -> None:
    """A runner's memory holds its own derived key and not the daemon's (neither hex nor raw); the
    template's memory holds neither; the key file the runner was given is gone once it runs."""
    with shared_daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 60})
        pid, template = runner_pid(c, sid), c.status()["template_pid"]
        daemon_key = c.info.key_bytes
        own = derive_key(daemon_key, sid)
        assert not (shared_daemon.home / "sessions" / sid / "runner.key").exists()
        in_runner = _memory_contains(pid, [daemon_key, daemon_key.hex().encode(), own, own.hex().encode()])
        assert in_runner & {own, own.hex().encode()}, "the scan did not even find the runner's own key"
        assert not in_runner & {daemon_key, daemon_key.hex().encode()}, "the daemon key is in a runner"
        in_template = _memory_contains(template, [daemon_key, daemon_key.hex().encode(), own, own.hex().encode()])
        assert not in_template, "the template holds a key"
        c.kill(sid)


def test_a_runner_cannot_read_labd_state(shared_daemon) -> None:
    """Workflow code in the runner (Landlock on the runner process) cannot read daemon.key, the database,
    the connection file or another session's directory; its own work directory stays usable."""
    with shared_daemon.client() as c:
        runner = c.status()["sandbox"]["runner"]
        if runner != "landlock":
            print(f"SKIP runner confinement: {runner}")
            pytest.skip(f"runner confinement unavailable: {runner}")
        first = c.start("demo.count", params={"n": 1, "delay": 0})
        c.wait(first, timeout=30)
        home = shared_daemon.home
        (home / "sessions" / first / "work" / "secret.txt").write_text("first session's data")
        paths = [str(home / "daemon.key"), str(home / "labd.db"), str(layout_for(home).connection_file),
                 str(home / "sessions" / first / "work" / "secret.txt")]
        sid = c.start("labd_testflows:runner_reads", params={"paths": paths + ["runner-own-file"]})
        # (the last path does not exist: FileNotFoundError, not PermissionError: its directory is ours)
        final = c.wait(sid, timeout=60)
        assert final["status"] == "completed", final.get("reason")
        result = next(c.history(sid, kinds=["session.finished"]))["payload"]["result"]
        assert all(result[p] == "PermissionError" for p in paths), result
        assert result["runner-own-file"] == "FileNotFoundError"
        started = next(c.history(sid, kinds=["session.started"]))["payload"]
        assert started["runner_confinement"] == "landlock"


def test_events_forged_for_another_session_are_dropped_and_counted(daemon) -> None:
    """A compromised runner of session A (it has A's key only) sends events for session B: under B's
    routing id they fail B's signature; under its own id they name the wrong session. Both are dropped
    and counted; B's record is untouched and B still finishes normally. (A daemon of its own: the drop counters
    must be this test's alone.)"""
    with daemon.client() as c:
        a = c.start("demo.sleep", params={"seconds": 60})
        b = c.start("demo.count", params={"n": 30, "delay": 0.1})
        wait_until(lambda: c.session(b)["status"] == "running", timeout=30, what="B running")
        codec_a = Codec(derive_key(c.info.key_bytes, a))
        ctx = zmq.Context.instance()
        forged = [[10_000, time.time(), "output", None, None, {"stream": "stdout", "text": "FORGED\n"}]]
        socks = []
        for identity in (f"{b}:x".encode(), b.encode(), f"{a}:y".encode()):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, identity)
            s.connect(c.info.runners)
            s.send_multipart(codec_a.pack("events", {"session": b, "events": forged}))
            socks.append(s)
        counters = wait_until(lambda: (k := c.status()["counters"]).get("dropped.runner.bad_session") and k,
                              timeout=20, what="bad_session counted")
        assert counters.get("dropped.runner.bad_signature", 0) >= 2
        final = c.wait(b, timeout=60)
        assert final["status"] == "completed"
        text = "".join(e["payload"].get("text", "") for e in c.history(b, kinds=["output"]))
        assert "FORGED" not in text and text.count("count ") == 30
        for s in socks:
            s.close(0)
        c.kill(a)


def test_routing_id_hijack_does_not_stop_recording(shared_daemon) -> None:
    """Another process connects to the runner socket with ROUTING_ID=<session id> (and a guessed suffix)
    while the session runs and stays connected: the real runner's events keep arriving and the session
    completes with every line recorded (before, ROUTER_HANDOVER gave the route to the impostor)."""
    with shared_daemon.client() as c:
        n = 40
        sid = c.start("demo.count", params={"n": n, "delay": 0.1})
        wait_until(lambda: c.session(sid)["status"] == "running", timeout=30, what="running")
        ctx = zmq.Context.instance()
        impostors = []
        wrong_key = Codec(c.info.key_bytes)  # even the daemon's key is not this session's key
        for identity in (sid.encode(), f"{sid}:0000000000000000".encode()):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, identity)
            s.connect(c.info.runners)
            s.send_multipart(wrong_key.pack("hello", {"session": sid, "last_seq": 0}))
            impostors.append(s)
        final = c.wait(sid, timeout=90)
        assert final["status"] == "completed", final.get("reason")
        lines = [e for e in c.history(sid, kinds=["output"]) if "count " in e["payload"].get("text", "")]
        assert len(lines) == n
        for s in impostors:
            assert not s.poll(0), "the impostor was sent something meant for the runner"
            s.close(0)


def test_derived_keys_differ_per_session_and_from_the_daemon_key() -> None:
    """``derive_key`` is deterministic per (daemon key, session) and yields distinct 32-byte keys."""
    k = b"k" * 32
    assert derive_key(k, "a") == derive_key(k, "a")
    assert len({derive_key(k, "a"), derive_key(k, "b"), derive_key(b"j" * 32, "a"), k}) == 4
    assert len(derive_key(k, "a")) == 32


def test_a_workflow_checked_at_import_is_confined_and_silenced_like_its_runner(daemon, tmp_path) -> None:
    """A user's workflow module runs code at import in the check before the session exists. That check is
    confined as the runner will be: it cannot read daemon.key, the database or the connection file (before: it
    read the key, found by an attack review); and what it writes to stdout/stderr goes nowhere (before: into the
    daemon's log, unbounded). The session itself then runs as usual. (A daemon of its own: it reads the daemon's
    log.)"""
    with daemon.client() as c:
        runner = c.status()["sandbox"]["runner"]
        if runner != "landlock":
            print(f"SKIP runner confinement: {runner}")
            pytest.skip(f"runner confinement unavailable: {runner}")
    home = daemon.home
    paths = [str(home / "daemon.key"), str(home / "labd.db"), str(layout_for(home).connection_file)]
    out = tmp_path / "outcomes"
    out.mkdir()
    (tmp_path / "import_reads.py").write_text(textwrap.dedent(f'''
        import os, sys
        outcomes = []
        for p in {paths!r}:
            try:
                open(p, "rb").read(1)
                outcomes.append(p + " READ")
            except OSError as exc:
                outcomes.append(p + " " + type(exc).__name__)
        # one file per importing process (the check, then the runner)
        with open(os.path.join({str(out)!r}, str(os.getpid())), "w") as f:
            f.write("\\n".join(outcomes))
        sys.stderr.write("NOISE-AT-IMPORT " * 65536)  # 1 MiB
        sys.stdout.write("NOISE-AT-IMPORT " * 65536)

        def flow(ctx) -> str:
            return "ran"
    '''))
    log_before = daemon.log_path.stat().st_size
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'import_reads.py'}:flow")
        assert c.wait(sid, timeout=60)["status"] == "completed"
    reports = [f.read_text() for f in out.iterdir()]
    assert len(reports) == 2, reports  # the check's import and the runner's
    for report in reports:
        assert all(line.endswith("PermissionError") for line in report.splitlines()), report
    assert "NOISE-AT-IMPORT" not in daemon.log_path.read_text(errors="replace")[log_before:]


SPY = textwrap.dedent('''
    import time
    import zmq

    def spy(ctx, endpoint: str, seconds: float = 3.0) -> int:
        """Subscribe to every session's live events, as a hostile workflow (or code it runs) would."""
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"session.")
        sub.connect(endpoint)
        got, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sub.poll(100):
                sub.recv_multipart()
                got += 1
        return got
''')


def test_only_holders_of_the_key_can_follow_live_events(daemon, tmp_path) -> None:
    """The live event socket admits ZeroMQ PLAIN clients with the password derived from the daemon key only. While
    a session prints, a subscriber with no mechanism (what a workflow or sandboxed code could open: Landlock does
    not govern connecting to a Unix socket), a PLAIN one guessing the password, and a CURVE one with a key of its
    own, receive nothing; a session that spies from inside its runner receives nothing; a client with the
    connection file receives the events. Before, any local process could read every session's output and
    activity (found by an attack review). (A daemon of its own: it reads the daemon's log.)"""
    import zmq

    from labd.ipc.connection import EVENTS_USER, events_socket, local_events_credentials

    (tmp_path / "spyflows.py").write_text(SPY)
    with daemon.client() as c:
        victim = c.start("demo.count", params={"n": 6000, "delay": 0.01, "label": "SECRET-of-victim"})
        ctx = zmq.Context.instance()
        plain = ctx.socket(zmq.SUB)
        guesser = ctx.socket(zmq.SUB)
        guesser.plain_username, guesser.plain_password = EVENTS_USER, b"0" * 64
        stranger = ctx.socket(zmq.SUB)
        stranger.curve_serverkey, _ = zmq.curve_keypair()
        stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        assert c.info.events_auth == "plain" and c.info.events_public is None  # what the connection file says
        good = events_socket(ctx, c.info)
        for s in (plain, guesser, stranger, good):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, b"session.")
            s.connect(c.info.events)
        spy = c.start(f"{tmp_path / 'spyflows.py'}:spy", params={"endpoint": c.info.events})
        spied = c.wait(spy, timeout=60)
        assert spied["status"] == "completed", spied.get("reason")
        assert next(c.history(spy, kinds=["session.finished"]))["payload"]["result"] == 0

        def drain(sock: zmq.Socket, seconds: float = 2.0) -> list[bytes]:
            """What ``sock`` receives in ``seconds`` (the victim prints all the while)."""
            out, deadline = [], time.monotonic() + seconds
            while time.monotonic() < deadline:
                if sock.poll(50):
                    out += sock.recv_multipart()
            return out

        received = drain(good)
        assert any(b"SECRET-of-victim" in frame for frame in received)
        assert drain(plain) == [] and drain(guesser) == [] and drain(stranger) == []
        _, password = local_events_credentials(c.info.key_bytes)  # admitted and refused handshakes logged nothing
        assert password.decode() not in daemon.log()
        c.kill(victim)
        for s in (plain, guesser, stranger, good):
            s.close(0)


def test_a_write_the_confinement_refuses_says_why(shared_daemon) -> None:
    """A submitted function that creates a file directly in the directory holding labd's home (as ``~`` holds the
    default home) gets the PermissionError, with a note saying it is labd's confinement and where to write instead;
    a user review read the bare ``[Errno 13]`` as a bug (README said only "use absolute paths")."""
    import labd

    with shared_daemon.client() as c:
        if c.status()["sandbox"]["runner"] != "landlock":
            pytest.skip("runner confinement unavailable")
        target = str(shared_daemon.home.parent / f"new-{os.getpid()}.txt")

        def write(path: str) -> None:
            with open(path, "w") as f:
                f.write("x")

        sid = c.submit(write, target)
        with pytest.raises(labd.RemoteError) as err:
            c.result(sid, timeout=60)
    text = str(err.value)
    assert "PermissionError" in text and "cannot create new entries directly in" in text, text
    assert "session's work directory" in text and not os.path.exists(target)
