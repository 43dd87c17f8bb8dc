"""Ray sessions outlive their daemon: a real local Ray cluster (the one tests/integration/test_ray.py uses, shared
through tests/support/ray_cluster.py) and real daemons, stopped (``labd shutdown``) or SIGKILLed while a session
runs on the cluster, then started again on the same home.

The session's actor is detached, so its runner keeps running and spooling while no daemon runs; the next daemon
finds the actor by name, admits the runner's key again on the same runner port, and the runner delivers what it
printed meanwhile: every line exactly once, in order, ``seq`` gap-free. After the restart the session can be
stopped; an actor killed while no daemon ran makes the session ``lost`` with a reason naming it; an actor Ray has
not placed yet is waited for across restarts (not ``lost``), can be stopped, and runs once it is placed; and no
actor is left on the cluster once the sessions have ended."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq.auth

from labd.daemon.ray_adopt import PORT_FILE, actor_name, namespace
from labd.ipc import LabdError
from tests.conftest import DaemonProc, wait_until
from tests.support.ray_cluster import free_port, rayctl, shared_cluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]
ray = pytest.importorskip("ray")

ENDED = ("completed", "failed", "cancelled", "lost")
SHORT_ADOPT_S = 8.0  # the adoption deadline of the daemon that waits past it (LABD_RAY_ADOPT_TIMEOUT_S)


@pytest.fixture(scope="session")
def ray_cluster(request: pytest.FixtureRequest) -> dict[str, object]:
    """The test session's one-node Ray cluster, shared with tests/integration/test_ray.py."""
    return shared_cluster(request.config)


class Rig:
    """A daemon on the test's home whose sessions run on the cluster; it can be stopped and started again."""

    def __init__(self, home: Path, cluster: dict[str, Any]) -> None:
        self.home, self.cluster = home, cluster
        self.node_dir = home.parent / "node"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[launcher]\nkind = "ray"\naddress = "{cluster["address"]}"\nrunner_listen = "tcp://127.0.0.1:0"\n'
            f'node_dir = "{self.node_dir}"\n')
        self.daemon = DaemonProc(home).start()

    @property
    def namespace(self) -> str:
        """This home's Ray namespace (from its daemon's CURVE public key)."""
        public, _ = zmq.auth.load_certificate(str(self.home / "curve" / "server.key"))
        return namespace(public)

    def client(self) -> Any:
        """A client of the current daemon."""
        return self.daemon.client(timeout=30)

    def shutdown(self) -> float:
        """``labd shutdown``, waited for; returns when it was asked."""
        asked = time.time()
        run = subprocess.run([sys.executable, "-m", "labd", "--home", str(self.home), "shutdown"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert self.daemon.proc is not None
        self.daemon.proc.wait(30)
        self.daemon.stop()
        return asked

    def kill9(self) -> float:
        """SIGKILL the daemon; returns when."""
        killed = time.time()
        self.daemon.kill9()
        self.daemon.stop()
        return killed

    def restart(self, env: dict[str, str] | None = None) -> float:
        """A new daemon on the same home (``env`` added to its environment); returns when it was ready (one that never
        gets ready is still the rig's, so the fixture stops it)."""
        self.daemon = DaemonProc(self.home, extra_env=env)
        self.daemon.start()
        return time.time()

    def workdir(self, sid: str) -> Path:
        """The session's work directory on the node."""
        return self.node_dir / sid / "work"

    def progress(self, sid: str) -> int:
        """The last tick the workflow wrote on the node (-1 before the first)."""
        try:
            return int((self.workdir(sid) / "progress").read_text() or -1)
        except (OSError, ValueError):
            return -1


@pytest.fixture
def rig(ray_cluster: dict[str, Any], isolated_env: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A Ray daemon on the test's home; afterwards its sessions are killed, the daemon stopped, and, if the test
    failed, any actor of its namespace killed (a leak must not hold the cluster's CPUs for the next test)."""
    r = Rig(isolated_env, ray_cluster)
    try:
        yield r
    finally:
        try:
            if r.daemon.proc is not None and r.daemon.proc.poll() is None:
                with r.client() as c:
                    live = [s["id"] for s in c.sessions() if s["status"] not in ENDED + ("queued",)]
                    for sid in live:
                        c.kill(sid)
                    wait_until(lambda: all(c.session(s)["status"] in ENDED for s in live), timeout=30,
                               interval=0.2, what="sessions killed")
        except LabdError:  # a daemon that never got ready (the test failed): stopped below all the same
            pass
        finally:
            r.daemon.stop()
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                rayctl(r.cluster, r.namespace, "killall")


def _events(c: Any, sid: str, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    return list(c.history(sid, kinds=kinds))


def _ended(c: Any, sid: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (s := c.session(sid)) and s["status"] in ENDED and s, timeout=timeout, interval=0.1,
                      what=f"session {sid} ended")


def _ticks(c: Any, sid: str) -> list[str]:
    text = "".join(e["payload"]["text"] for e in _events(c, sid, ["output"]))
    return text.splitlines()


def _started(c: Any, rig: Rig) -> tuple[str, dict[str, Any]]:
    sid = c.start("labd_rayadoptflows:gated")
    placed = wait_until(lambda: _events(c, sid, ["session.placed"]), timeout=60, interval=0.1, what="placed")
    wait_until(lambda: len(_ticks(c, sid)) >= 5, timeout=60, interval=0.1, what="some output")
    return sid, placed[0]["payload"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _open_gate_and_check(c: Any, rig: Rig, sid: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Let the gated session end; it completed, everything it printed is there exactly once and in order, its
    ``seq`` has no gap, and its result counts its ticks. Returns its events."""
    (rig.workdir(sid) / "gate").write_text("")
    s = _ended(c, sid, timeout=timeout)
    assert s["status"] == "completed", s
    lines = _ticks(c, sid)
    n = len(lines) - 1
    assert lines == [f"tick {i}" for i in range(n)] + ["done"], lines[-5:]
    evs = _events(c, sid)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert next(e for e in evs if e["kind"] == "session.finished")["payload"]["result"] == n
    return evs


def _completes_whole(c: Any, rig: Rig, sid: str, down: float, up: float) -> None:
    """Let the gated session end; everything it printed is there exactly once, in order, some of it printed
    while no daemon ran; the session's ``seq`` has no gap; it was adopted and it completed."""
    wait_until(lambda: len(_ticks(c, sid)) > rig.progress(sid) - 5 > 0, timeout=60, interval=0.1,
               what="output after the restart")
    evs = _open_gate_and_check(c, rig, sid)
    assert [e["kind"] for e in evs].count("session.adopted") == 1
    meanwhile = [e for e in evs if e["kind"] == "output" and down < e["ts"] < up]
    assert meanwhile, "nothing recorded as printed while no daemon ran"


def test_session_survives_clean_shutdown_and_is_adopted(rig: Rig) -> None:
    """`labd shutdown` with a Ray session running: the session keeps printing on its node while no daemon runs,
    the next daemon adopts it, and its output before, during and after the restart arrives exactly once, in order
    with a gap-free `seq`; it completes, and its actor is gone from the cluster afterwards."""
    with rig.client() as c:
        sid, placed = _started(c, rig)
    at = rig.progress(sid)
    down = rig.shutdown()
    wait_until(lambda: rig.progress(sid) >= at + 10, timeout=30, interval=0.1, what="printing with no daemon")
    assert not _gone(int(placed["pid"]))
    up = rig.restart()
    with rig.client() as c:
        assert c.session(sid)["status"] == "running"
        _completes_whole(c, rig, sid, down, up)
    wait_until(lambda: _gone(int(placed["actor_pid"])), timeout=30, interval=0.1, what="actor process gone")
    assert rayctl(rig.cluster, rig.namespace, "list") == []


def test_a_runner_port_taken_at_a_restart_is_bound_once_it_is_free(rig: Rig) -> None:
    """The runner port of the last daemon is taken when the next one starts: it listens on another port for new
    runners, keeps the taken one remembered, and binds it as soon as it is free, so the running session's runner
    reconnects and its output (some printed while no daemon ran) arrives whole and in order, and it completes.
    Before, the taken port was forgotten: the session stayed `running` with no output for good, and a stop recorded
    it `cancelled` though its workflow had completed (Ray review)."""
    with rig.client() as c:
        sid, _placed = _started(c, rig)
    old = int((rig.home / PORT_FILE).read_text().split()[0])
    down = rig.shutdown()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old daemon's TIME_WAIT connections
    blocker.bind(("127.0.0.1", old))
    blocker.listen()
    try:
        up = rig.restart()
        ports = [int(p) for p in (rig.home / PORT_FILE).read_text().split()]
        assert ports[1:] == [old] and ports[0] != old, ports  # the new one first, the taken one kept
        with rig.client() as c:
            assert c.session(sid)["status"] == "running"
            # The status says which port waits, and (once its driver has connected in the background: a start
            # never waits for the cluster) that the cluster answers.
            ray_state = wait_until(lambda: (r := c.status()["ray"])["driver"] and r, timeout=60, interval=0.2,
                                   what="the Ray driver connected")
            assert ray_state["waiting_ports"] == [old] and "down_since" not in ray_state, ray_state
    finally:
        blocker.close()
    with rig.client() as c:
        _completes_whole(c, rig, sid, down, up)
    rig.shutdown()
    rig.restart()  # nothing to adopt now: only the port bound is remembered (older ones piled up, tried for good)
    with rig.client() as c:
        wait_until(lambda: c.status()["ray"]["waiting_ports"] == [] and
                   len((rig.home / PORT_FILE).read_text().split()) == 1, timeout=30, what="the ports pruned")


def test_a_daemon_restarted_while_its_cluster_does_not_answer_keeps_its_ray_sessions(rig: Rig) -> None:
    """The daemon is restarted while its Ray cluster does not answer (its address points where nothing listens, as
    in an outage). It starts all the same (before: it refused to start), runs local sessions, shows the cluster
    down in `labd status`, fails a `--on ray` start at once saying why, and keeps its Ray session `running`, not
    lost: the session's runner calls the daemon, not Ray, so its output still arrives. Restarted with the cluster
    answering, the daemon adopts the session, which completes with every line exactly once and in order."""
    with rig.client() as c:
        sid, _placed = _started(c, rig)
    rig.shutdown()
    config = rig.home / "config.toml"
    good = config.read_text()
    config.write_text(good.replace(str(rig.cluster["address"]), f"127.0.0.1:{free_port()}"))
    rig.restart(env={"LABD_RAY_CONNECT_TIMEOUT_S": "3"})
    with rig.client() as c:
        st = wait_until(lambda: (s := c.status()) and (s.get("ray") or {}).get("down_since") and s, timeout=60,
                        interval=0.2, what="the cluster reported down")
        assert st["ray"]["adopting"] == 1 and st["ray"]["error"] and not st["ray"]["driver"], st["ray"]
        out = subprocess.run([sys.executable, "-m", "labd", "--home", str(rig.home), "status"], capture_output=True,
                             text=True, timeout=60)
        assert "DOES NOT ANSWER" in out.stdout, out.stdout
        at = len(_ticks(c, sid))
        wait_until(lambda: len(_ticks(c, sid)) > at + 5, timeout=30, interval=0.1, what="output while Ray is down")
        assert c.session(sid)["status"] == "running"
        local = _ended(c, c.start("demo.count", params={"n": 2, "delay": 0}, placement={"on": "local"}))
        assert local["status"] == "completed", (local["reason"], local.get("error"))
        refused = c.start("labd_rayadoptflows:gated", placement={"on": "ray"})
        s = _ended(c, refused)
        assert s["status"] == "failed" and "does not answer" in str(s["reason"]), s
    rig.shutdown()
    config.write_text(good)
    rig.restart()
    with rig.client() as c:
        wait_until(lambda: _events(c, sid, ["session.adopted"]), timeout=60, interval=0.1, what="adopted")
        evs = _open_gate_and_check(c, rig, sid)
        assert [e["kind"] for e in evs].count("session.adopted") == 1
    assert rayctl(rig.cluster, rig.namespace, "list") == []


def test_session_survives_daemon_sigkill_and_stop_works_after(rig: Rig) -> None:
    """A daemon SIGKILLed with two Ray sessions running: both keep running; the next daemon adopts them; one
    completes with all its output exactly once and a gap-free `seq`, the other is stopped (`labd stop` reaches the
    adopted runner: cancelled). No actor of the home is left on the cluster."""
    with rig.client() as c:
        a, placed_a = _started(c, rig)
        b, placed_b = _started(c, rig)
    at = rig.progress(a), rig.progress(b)
    down = rig.kill9()
    wait_until(lambda: rig.progress(a) >= at[0] + 10 and rig.progress(b) >= at[1] + 10, timeout=30,
               interval=0.1, what="printing with no daemon")
    up = rig.restart()
    with rig.client() as c:
        assert c.session(a)["status"] == c.session(b)["status"] == "running"
        at_b = rig.progress(b)
        wait_until(lambda: len(_ticks(c, b)) > at_b, timeout=60, interval=0.1, what="b delivers after restart")
        c.stop(b, grace=2)  # not at a step boundary: the ladder goes on to SIGTERM through the adopted actor
        _completes_whole(c, rig, a, down, up)
        sb = _ended(c, b)
        assert sb["status"] == "cancelled", sb
        assert _events(c, b, ["session.stopping"]), "the stop was not recorded"
    for placed in (placed_a, placed_b):
        wait_until(lambda p=placed: _gone(int(p["actor_pid"])), timeout=30, interval=0.1, what="actor gone")
    assert rayctl(rig.cluster, rig.namespace, "list") == []


def test_actor_killed_while_no_daemon_ran_is_lost_with_reason(rig: Rig) -> None:
    """A session whose actor was killed (Ray's API, by name) while no daemon ran is recorded `lost` by the next
    daemon, with a reason naming the actor; what it delivered before is kept. An actor of the home's namespace
    that no session owns (as a session deleted while its actor could not be ended would leave) is swept away by
    the next daemon: none is left on the cluster."""
    with rig.client() as c:
        sid, placed = _started(c, rig)
        before = _ticks(c, sid)
    rig.shutdown()
    assert rayctl(rig.cluster, rig.namespace, "kill", actor_name(sid)) == "killed"
    assert rayctl(rig.cluster, rig.namespace, "stray", actor_name("0123456789ab")) == "created"
    wait_until(lambda: _gone(int(placed["pid"])), timeout=30, interval=0.1, what="runner gone with its actor")
    rig.restart()
    with rig.client() as c:
        s = _ended(c, sid, timeout=30)
        assert s["status"] == "lost", s
        assert actor_name(sid) in str(s["reason"]) and "not found" in str(s["reason"]), s
        assert _ticks(c, sid)[:len(before)] == before
    assert rayctl(rig.cluster, rig.namespace, "list") == []


def _ray_drivers(rig: Rig) -> list[psutil.Process]:
    """The current daemon's Ray driver process(es): its children running ``-m labd.daemon.ray_driver``."""
    assert rig.daemon.proc is not None
    found = []
    for child in psutil.Process(rig.daemon.proc.pid).children():
        try:
            if "labd.daemon.ray_driver" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _logged(rig: Rig, event: str, **fields: Any) -> list[dict[str, Any]]:
    """The daemon's JSON log records whose ``event`` is ``event`` and that carry ``fields``."""
    records = []
    for line in rig.daemon.log().splitlines():
        try:
            rec = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if rec.get("event") == event and all(rec.get(k) == v for k, v in fields.items()):
            records.append(rec)
    return records


def test_session_survives_its_ray_driver_dying_while_the_daemon_runs(rig: Rig) -> None:
    """The daemon's Ray driver process (its child that speaks to Ray) is SIGKILLed while a Ray session runs, the
    daemon running on: the launcher starts a new driver and adopts the session's detached actor again, which the
    session's history records (`session.adopted` with its reason); the session is not lost, keeps delivering,
    completes with every line exactly once, in order, and a gap-free `seq`, and no actor of the home is left on the
    cluster afterwards."""
    with rig.client() as c:
        sid, placed = _started(c, rig)
        [old] = _ray_drivers(rig)
        old.kill()
        wait_until(lambda: _gone(old.pid), timeout=10, interval=0.05, what="the old driver gone")
        wait_until(lambda: _logged(rig, "Ray session adopted", session_id=sid), timeout=30, interval=0.1,
                   what="the session adopted by a new driver")
        assert _logged(rig, "the Ray driver process ended: starting a new one to adopt its sessions")
        [new] = wait_until(lambda: _ray_drivers(rig), timeout=10, interval=0.05, what="a new driver")
        assert new.pid != old.pid
        assert c.session(sid)["status"] == "running"
        [adopted] = wait_until(lambda: list(c.history(sid, kinds=["session.adopted"])), timeout=10, interval=0.05,
                               what="the re-adoption in the session's history")
        assert adopted["payload"]["pid"] == 0 and "Ray driver" in adopted["payload"]["reason"]
        at = rig.progress(sid)
        wait_until(lambda: len(_ticks(c, sid)) > at + 5, timeout=30, interval=0.1, what="output after re-adoption")
        _open_gate_and_check(c, rig, sid, timeout=30)
    wait_until(lambda: _gone(int(placed["actor_pid"])), timeout=30, interval=0.1, what="actor process gone")
    assert rayctl(rig.cluster, rig.namespace, "list") == []
    assert _ray_drivers(rig) == [new]  # the replacement is the daemon's one driver (no second one started)


@pytest.mark.timeout(240)
def test_actor_waiting_for_a_node_across_restarts_is_not_lost(rig: Rig) -> None:
    """Three Ray sessions whose actors Ray cannot place yet (each asks for the head node's one ``head``, held by
    a running session) stay `starting` across a clean shutdown and a SIGKILL of the daemon, and longer than an
    adoption waits for an actor's answer (30 s; 8 s here, ``LABD_RAY_ADOPT_TIMEOUT_S``: they were recorded `lost`
    once it passed); their actors are still
    waiting in Ray's queue. One is stopped while it waits: `cancelled`, stopped by the client, its actor gone.
    One's actor is killed (Ray's API) while it waits: `lost`, with Ray's reason. Once the holder completes, the
    last is placed and runs: its runner starts from the spec the first daemon gave, delivers every line once and
    in order with a gap-free `seq`, and completes. No actor is left."""
    head = {"on": "ray", "resources": {"head": 1}}
    with rig.client() as c:
        holder = c.start("labd_rayadoptflows:gated", placement=head)
        wait_until(lambda: _events(c, holder, ["session.placed"]), timeout=60, interval=0.1, what="holder placed")
        waiting = [c.start("labd_rayadoptflows:gated", placement=head) for _ in range(3)]
        names = [actor_name(s) for s in waiting]
        wait_until(lambda: all(c.session(s)["status"] == "starting" for s in waiting), timeout=30, interval=0.1,
                   what="their actors created")  # launched: Ray registered the (named) actors
    rig.shutdown()
    rig.restart()  # adopted while they wait (answered once the new daemon's driver has connected) ...
    with rig.client() as c:
        wait_until(lambda: all(_events(c, s, ["session.adopted"]) for s in waiting), timeout=60, interval=0.1,
                   what="adopted by the first restart")
    rig.kill9()
    # ... and again, after a SIGKILL, by a daemon whose adoption deadline is 8 s instead of 30 (the same path, sooner)
    up = rig.restart(env={"LABD_RAY_ADOPT_TIMEOUT_S": str(SHORT_ADOPT_S)})
    with rig.client() as c:
        wait_until(lambda: time.time() > up + SHORT_ADOPT_S + 1  # the old deadline ran from before `up`
                   or any(c.session(s)["status"] != "starting" for s in waiting),
                   timeout=SHORT_ADOPT_S + 30, interval=0.5, what="past the old adoption deadline")
        assert [c.session(s)["status"] for s in waiting] == ["starting"] * 3, \
            [(c.session(s)["status"], c.session(s)["reason"]) for s in waiting]
        for sid in waiting:
            assert [e["kind"] for e in _events(c, sid)].count("session.adopted") == 2
            assert not _events(c, sid, ["session.placed"])
            assert _logged(rig, "Ray session adopted", session_id=sid, waiting="PENDING_CREATION")
        assert rayctl(rig.cluster, rig.namespace, "states", *names) == dict.fromkeys(names, "PENDING_CREATION")
        stopped, dies, runs = waiting
        c.stop(stopped, grace=1)
        assert rayctl(rig.cluster, rig.namespace, "kill", actor_name(dies)) == "killed"
        s = _ended(c, stopped, timeout=30)
        assert s["status"] == "cancelled" and "stopped by client" in str(s["reason"]), s
        s = _ended(c, dies, timeout=30)
        assert s["status"] == "lost" and "Ray actor lost" in str(s["reason"]), s
        _open_gate_and_check(c, rig, holder)  # the head has room now: `runs` is placed (`stopped`'s actor is gone)
        wait_until(lambda: len(_ticks(c, runs)) >= 5, timeout=60, interval=0.1, what="output once placed")
        evs = _open_gate_and_check(c, rig, runs)
        assert [e["kind"] for e in evs].count("session.placed") == 1
        assert not _events(c, stopped, ["session.placed", "output"]) and not _events(c, dies, ["output"])
    wait_until(lambda: rayctl(rig.cluster, rig.namespace, "list") == [], timeout=30, interval=0.5,
               what="no actor left")  # `stopped`'s and `dies`' included: they are not waiting


def test_actor_placed_while_no_daemon_ran_runs_its_session(rig: Rig) -> None:
    """A Ray session whose actor was waiting for a node when the daemon stopped, and that Ray placed while no
    daemon ran (the session holding the head node's one ``head`` was killed meanwhile), runs: its runner starts
    from the spec the actor was created with (a call the first driver had queued for it went with that driver).
    The next daemon adopts it, records where it was placed (once), and everything it printed, before and after the
    restart, arrives exactly once and in order; it completes. No actor is left."""
    head = {"on": "ray", "resources": {"head": 1}}
    with rig.client() as c:
        holder = c.start("labd_rayadoptflows:gated", placement=head)
        wait_until(lambda: _events(c, holder, ["session.placed"]), timeout=60, interval=0.1, what="holder placed")
        sid = c.start("labd_rayadoptflows:gated", placement=head)
        wait_until(lambda: c.session(sid)["status"] == "starting", timeout=30, interval=0.1, what="its actor created")
        assert not _events(c, sid, ["session.placed", "output"])
    down = rig.shutdown()
    assert rayctl(rig.cluster, rig.namespace, "kill", actor_name(holder)) == "killed"
    wait_until(lambda: rig.progress(sid) >= 5, timeout=60, interval=0.1, what="placed and printing with no daemon")
    up = rig.restart()
    with rig.client() as c:
        assert _ended(c, holder, timeout=30)["status"] == "lost"
        assert _logged(rig, "Ray session adopted", session_id=sid)
        evs = _open_gate_and_check(c, rig, sid)
        [placed] = [e for e in evs if e["kind"] == "session.placed"]
        assert placed["payload"]["actor"] == actor_name(sid) and placed["payload"]["workdir"] == str(rig.workdir(sid))
        assert [e for e in evs if e["kind"] == "output" and down < e["ts"] < up], "nothing printed with no daemon"
    wait_until(lambda: rayctl(rig.cluster, rig.namespace, "list") == [], timeout=30, interval=0.5,
               what="no actor left")
