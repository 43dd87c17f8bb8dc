"""The Ray launcher against a real local Ray cluster: ``ray start --head`` on 127.0.0.1 with 2 CPUs (a real GCS,
raylet and worker processes, started once per test session), plus, for the node-loss test, a second ``ray start``
worker node on the same host (a real second raylet). Not ``ray.init()`` local mode: the launcher's driver connects
to a cluster by address, and actor death, node death and placement are what is tested.

Sessions run in their own actor process, the runner connecting back over TCP with CurveZMQ; output, agent events,
approvals and shipped files reach the daemon; a killed actor or node makes the session ``lost`` with Ray's reason
and keeps what it delivered; the runner endpoint refuses wrong keys."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq

from tests.conftest import REPO, SUPPORT, DaemonProc, wait_until
from tests.support.ray_cluster import RayNode, shared_cluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]
ray = pytest.importorskip("ray")

FLOWS = '''
import os, time
from pathlib import Path

def work(ctx) -> str:
    for i in range(3):
        print(f"remote line {i}", flush=True)
    Path("out.txt").write_text("written on the node\\n")
    Path("sub").mkdir(exist_ok=True)
    Path("sub/blob.bin").write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: three chunks
    d = ctx.approval("choose", "Which colour?", options=["red", "green"])
    from labd_testflows import agent_flow
    agent_flow(ctx)
    return d.decision

def stepped(ctx) -> str:
    with ctx.step("first"):
        Path("first.txt").write_text("step one's result\\n")
        Path("scratch.txt").write_text("deleted in step two\\n")
        Path("run.sh").write_text("#!/bin/sh\\necho ran\\n")
        os.chmod("run.sh", 0o755)
    with ctx.step("second"):
        os.remove("scratch.txt")
        d = ctx.approval("go", "Finish?", options=["yes"])
    return d.decision

def spin(ctx, seconds: float = 3.0) -> float:
    c0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        pass
    return (time.process_time() - c0) / (time.monotonic() - t0) * 100

def tick(ctx, n: int = 100000, delay: float = 0.05) -> int:
    for i in range(n):
        print(f"tick {i}", flush=True)
        time.sleep(delay)
    return n

def crash(ctx):
    import faulthandler
    print("about to crash", flush=True)
    faulthandler._sigsegv()

def twostep(ctx, marker: str = "") -> str:
    with ctx.step("make") as node:
        Path("made.txt").write_text("made in step one\\n")
        Path("big.bin").write_bytes(b"".join(bytes([i]) * (1 << 20) for i in range(1, 6)))  # 5 MiB: 5 chunks
        print("step one ran", flush=True)
        node.result = {"made": 1}
    with ctx.step("use"):
        if not os.path.exists(marker):
            Path("junk.txt").write_text("left by the failed try\\n")
            raise RuntimeError("transient failure")
        print(f"step two read: {Path('made.txt').read_text().strip()}, {len(Path('big.bin').read_bytes())} bytes",
              flush=True)
    return "done"

def lost_object(ctx, content: str, go: str, again: str) -> str:
    while not os.path.exists(go):
        ctx.sleep(0.05)
    with ctx.step("one"):
        Path("data.txt").write_text(content)
    while not os.path.exists(again):
        ctx.sleep(0.05)
    with ctx.step("two"):
        Path("other.txt").write_text("step two")
    return "done"

def nofile(ctx) -> list:
    import resource
    return list(resource.getrlimit(resource.RLIMIT_NOFILE))
'''


@pytest.fixture(scope="session")
def ray_cluster(request: pytest.FixtureRequest) -> dict[str, object]:
    """A one-node Ray cluster (2 CPUs) on loopback for the whole test session, shared with the other Ray test
    modules (tests/support/labd_raycluster.py); a short temp dir (Unix sockets)."""
    return shared_cluster(request.config)


@pytest.fixture(scope="module")
def ray_daemon(ray_cluster: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """One daemon for the module, its launcher on the cluster; its runtime dir fixed so every test reaches it."""
    base = tmp_path_factory.mktemp("raydaemon")
    home, runtime = base / "home", Path(tempfile.mkdtemp(prefix="lr", dir="/tmp"))
    home.mkdir()
    (home / "config.toml").write_text(
        f'[launcher]\nkind = "ray"\naddress = "{ray_cluster["address"]}"\nrunner_listen = "tcp://127.0.0.1:0"\n'
        f'node_dir = "{base / "node"}"\n')
    (base / "flows.py").write_text(FLOWS)
    d = DaemonProc(home, extra_env={"XDG_RUNTIME_DIR": str(runtime), "LABD_HOME": str(home),
                                    "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])})
    d.flows = base / "flows.py"  # type: ignore[attr-defined]
    d.runtime = runtime  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:  # the daemon's readiness is checked through its own runtime dir
        mp.setenv("XDG_RUNTIME_DIR", str(runtime))
        d.start()
    try:
        yield d
    finally:
        d.stop()
        subprocess.run(["rm", "-rf", str(runtime)], check=False)


@pytest.fixture
def rc(ray_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A client of the module's daemon (the test's own runtime dir is replaced by the daemon's)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(ray_daemon.runtime))  # type: ignore[attr-defined]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    c = ray_daemon.client(timeout=30)
    try:
        yield c
    finally:
        c.close()


def _events(c: object, sid: str, kinds: list[str] | None = None) -> list[dict[str, object]]:
    return list(c.history(sid, kinds=kinds))  # type: ignore[attr-defined]


def _ended(c: object, sid: str, timeout: float = 60) -> dict[str, object]:
    return wait_until(lambda: (s := c.session(sid)) and s["status"] in ("completed", "failed", "cancelled", "lost")  # type: ignore[attr-defined]
                      and s, timeout=timeout, interval=0.1, what=f"session {sid} ended")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _placed(c: object, sid: str) -> dict[str, object]:
    ev = wait_until(lambda: _events(c, sid, ["session.placed"]), timeout=60, interval=0.1, what="session.placed")
    return ev[0]["payload"]  # type: ignore[no-any-return]


def test_session_in_actor_output_agents_approval_files(ray_daemon: DaemonProc, rc: object) -> None:
    """A session started with the Ray launcher runs in an actor process (not a child of the daemon), in a work
    directory on the node; its output, agent events and approval go through the TCP+CURVE channel, the client's
    answer reaches it, and at the end its files are shipped back byte for byte where `labd files` looks."""
    c = rc
    sid = c.start(f"{ray_daemon.flows}:work")  # type: ignore[attr-defined]
    placed = _placed(c, sid)
    assert placed["workdir"] != str(ray_daemon.home / "sessions" / sid / "work")
    assert placed["node"] and placed["pid"] > 0
    ap = wait_until(lambda: _events(c, sid, ["approval.requested"]), timeout=60, interval=0.1, what="approval")
    assert ap[0]["payload"]["options"] == ["red", "green"]
    c.resolve(sid, "green")  # type: ignore[attr-defined]
    s = _ended(c, sid)
    assert s["status"] == "completed", s
    evs = _events(c, sid)
    launched = next(e for e in evs if e["kind"] == "session.launched")
    assert launched["payload"]["launcher"] == "ray"
    out = "".join(e["payload"]["text"] for e in evs if e["kind"] == "output")
    assert "remote line 0" in out and "remote line 2" in out
    kinds = {e["kind"] for e in evs}
    assert {"agent.turn.started", "agent.turn.finished", "file.shipped"} <= kinds, kinds
    finished = next(e for e in evs if e["kind"] == "session.finished")
    assert finished["payload"]["result"] == "green"
    work = ray_daemon.home / "sessions" / sid / "work"
    blob = bytes(range(256)) * 5000
    assert (work / "out.txt").read_text() == "written on the node\n"
    assert hashlib.sha256((work / "sub" / "blob.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()
    files = {f["path"] for f in c.files(sid)}  # type: ignore[attr-defined]
    assert {"out.txt", "sub/blob.bin"} <= files
    shipped = [e["payload"] for e in evs if e["kind"] == "file.shipped"]
    assert all("data" not in p and "error" not in p for p in shipped)  # bytes on disk, not in the store
    shown = subprocess.run([sys.executable, "-m", "labd", "show", sid], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "LABD_HOME": str(ray_daemon.home)})
    runs_on = next(line for line in shown.stdout.splitlines() if line.startswith("runs on"))  # where it ran
    assert f"Ray node {placed.get('hostname') or placed['ip']}" in runs_on, shown.stdout


def test_actor_killed_session_lost_delivered_kept(ray_daemon: DaemonProc, rc: object) -> None:
    """Killing the session's actor process (SIGKILL, as an OOM killer or a crash would) ends the session `lost`
    with Ray's reason within seconds; every output line it had delivered is still there, gap-free."""
    c = rc
    sid = c.start(f"{ray_daemon.flows}:tick")  # type: ignore[attr-defined]
    placed = _placed(c, sid)
    wait_until(lambda: len(_events(c, sid, ["output"])) >= 5, timeout=60, interval=0.1, what="some output")
    seen = [e["payload"]["text"] for e in _events(c, sid, ["output"])]
    os.kill(int(placed["actor_pid"]), signal.SIGKILL)
    t0 = time.monotonic()
    s = _ended(c, sid, timeout=60)
    took = time.monotonic() - t0
    assert s["status"] == "lost", s
    ended = _events(c, sid, ["session.ended"])[0]["payload"]
    # with Ray's cause, not only its first line ("The actor died unexpectedly ...", the same for every cause)
    assert "Ray actor lost" in ended["reason"] and "because" in ended["reason"], ended
    kept = "".join(e["payload"]["text"] for e in _events(c, sid, ["output"]))
    assert "".join(seen) in kept
    ticks = [int(line.split()[1]) for line in kept.splitlines() if line.startswith("tick ")]
    assert ticks == list(range(len(ticks)))  # nothing it delivered is missing
    print(f"actor kill -> session lost: {took:.2f}s")
    # the runner did not outlive its actor (parent-death signal): it stops writing
    wait_until(lambda: _gone(int(placed["pid"])), timeout=10, what="runner gone")


def test_a_ray_session_is_resumed_and_branched_on_ray(ray_daemon: DaemonProc, rc: object, tmp_path: Path) -> None:
    """A session that failed on Ray at its second step is resumed: it runs on Ray again (a second
    ``session.placed``), the first step is not run again (its output once in the whole record), and the second step
    reads the first step's files, restored on the node from the checkpoint objects the first runner shipped home
    (one of them 5 MiB: stored in chunks); the home's copy of the work directory follows (the failed try's file,
    which the restore removed, is deleted there, and restored files are not shipped again). A branch of it from the
    second step runs on Ray too, from the same
    checkpoint, and a replay of it as well. Both were refused ("ran on Ray": the checkpoints were on the node only).
    A Ray session whose objects never came home (a labd from before) is still refused, saying why."""
    from labd.ipc import LabdError

    c = rc
    marker = tmp_path / "marker"
    sid = c.start(f"{ray_daemon.flows}:twostep", params={"marker": str(marker)})  # type: ignore[attr-defined]
    first = _ended(c, sid)
    assert first["status"] == "failed" and "transient failure" in str(first["reason"]), first
    home_work = ray_daemon.home / "sessions" / sid / "work"
    assert (home_work / "junk.txt").exists() and (home_work / "big.bin").stat().st_size == 5 << 20  # shipped at its end
    objects = ray_daemon.home / "sessions" / sid / "checkpoints" / "objects"
    assert len(list(objects.glob("*/*.chunks"))) == 1 and len(list(objects.glob("*/*"))) >= 8  # chunks, index, ...
    hidden = objects.with_name("objects.hidden")
    objects.rename(hidden)  # as a labd that kept them on the node left it
    with pytest.raises(LabdError) as err:
        c.resume(sid)  # type: ignore[attr-defined]
    assert err.value.code == "not_resumable" and "ran on Ray" in err.value.message, err.value
    hidden.rename(objects)
    marker.write_text("go")
    assert c.resume(sid)["resumed"] is True  # type: ignore[attr-defined]
    again = _ended(c, sid)
    assert again["status"] == "completed", again
    out = "".join(str(e["payload"]["text"]) for e in _events(c, sid, ["output"]))
    assert out.count("step one ran") == 1, out
    assert "step two read: made in step one, 5242880 bytes" in out, out
    assert len(_events(c, sid, ["session.placed"])) == 2  # on Ray both times
    # the home's copy of its work directory follows the resume's: the failed try's file, removed on the node by the
    # restore, is gone here too, and the restored 5 MiB file was not shipped again (review helper-149)
    assert not (home_work / "junk.txt").exists() and (home_work / "made.txt").exists()
    resumed_from = max(e["seq"] for e in _events(c, sid, ["session.continued"]))
    again_shipped = {str(e["payload"]["path"]) for e in _events(c, sid, ["file.shipped"]) if e["seq"] > resumed_from}
    assert "big.bin" not in again_shipped and "junk.txt" in again_shipped, again_shipped
    failed = [e["payload"] for e in _events(c, sid, ["file.shipped", "checkpoint.object"]) if e["payload"].get("error")]
    assert not failed, failed  # every file and object kept at home, the ranges of a resumed runner's files too
    use = next(n for n in c.dag(sid)["dag"]["nodes"] if n.get("name") == "use")  # type: ignore[attr-defined]
    branch = c.branch(sid, use["node_id"])["sessions"][0]["session"]  # type: ignore[attr-defined]
    done = _ended(c, branch)
    assert done["status"] == "completed", done
    bout = "".join(str(e["payload"]["text"]) for e in _events(c, branch, ["output"]))
    assert "step one ran" not in bout and "step two read: made in step one, 5242880 bytes" in bout, bout
    assert _events(c, branch, ["session.placed"])
    # a replay of it runs on Ray too, its seed (the record it serves) carried to the node like a resume's
    replay = c.replay(sid)  # type: ignore[attr-defined]
    assert _ended(c, replay)["status"] == "completed"
    rout = "".join(str(e["payload"]["text"]) for e in _events(c, replay, ["output"]))
    assert "step two read: made in step one" in rout, rout
    assert _events(c, replay, ["session.placed"])


def test_stop_and_kill_through_ray(ray_daemon: DaemonProc, rc: object) -> None:
    """`labd pause`/`resume` and `labd stop` reach a remote runner cooperatively (over its channel): paused, running
    again, then cancelled; `labd kill` goes through
    the actor (SIGKILL to the runner's group on its node). Both end `cancelled` (stopped by the client), the
    second with the sigkill rung as the one that ended it."""
    c = rc
    a = c.start("labd_testflows:ticker", params={"n": 100000, "delay": 0.05})  # type: ignore[attr-defined]
    b = c.start(f"{ray_daemon.flows}:tick")  # type: ignore[attr-defined]
    for sid in (a, b):
        wait_until(lambda sid=sid: _events(c, sid, ["output"]), timeout=60, interval=0.1, what="output")
    c.pause(a)  # type: ignore[attr-defined]  # over the channel: at its next step boundary
    wait_until(lambda: c.session(a)["status"] == "paused", timeout=30, interval=0.1, what="paused")  # type: ignore[attr-defined]
    c.resume(a)  # type: ignore[attr-defined]
    wait_until(lambda: c.session(a)["status"] == "running", timeout=30, interval=0.1, what="resumed")  # type: ignore[attr-defined]
    c.stop(a)  # type: ignore[attr-defined]
    c.kill(b)  # type: ignore[attr-defined]
    sa, sb = _ended(c, a), _ended(c, b)
    assert sa["status"] == "cancelled", sa
    ended = _events(c, b, ["session.ended"])[0]["payload"]
    assert sb["status"] == "cancelled" and ended["ended_by"] == "sigkill" and ended.get("signal") == 9, ended


@pytest.fixture
def worker_node(ray_cluster: dict[str, object]) -> Iterator[RayNode]:
    """A second Ray node (a second raylet, 1 CPU, custom resource ``spare``) joined to the cluster on this host."""
    node = RayNode(["--address", str(ray_cluster["address"]), "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                    "--resources", '{"spare": 1}'], ray_cluster["env"])  # type: ignore[arg-type]
    try:
        node.wait_up()
        yield node
    finally:
        node.stop()


def test_node_lost_session_lost(ray_daemon: DaemonProc, rc: object, worker_node: RayNode) -> None:
    """A session placed by a custom resource on a second node is lost with Ray's reason when that node dies
    (its raylet and workers SIGKILLed); what it delivered before is kept."""
    c = rc
    sid = c.start(f"{ray_daemon.flows}:tick", placement={"on": "ray", "resources": {"spare": 1}})  # type: ignore[attr-defined]
    placed = _placed(c, sid)
    wait_until(lambda: len(_events(c, sid, ["output"])) >= 3, timeout=60, interval=0.1, what="some output")
    seen = "".join(e["payload"]["text"] for e in _events(c, sid, ["output"]))
    worker_node.kill()
    t0 = time.monotonic()
    s = _ended(c, sid, timeout=90)
    print(f"node kill -> session lost: {time.monotonic() - t0:.2f}s (placed on node {placed['node']})")
    assert s["status"] == "lost", s
    assert "Ray actor lost" in _events(c, sid, ["session.ended"])[0]["payload"]["reason"]
    assert seen in "".join(e["payload"]["text"] for e in _events(c, sid, ["output"]))


def test_limits_enforced_on_node(ray_daemon: DaemonProc, rc: object) -> None:
    """A remote session over its memory limit is killed by the node-local monitor in its actor, and one over its
    wall time is stopped by the daemon's ladder on the monitor's note: the same limit.exceeded events (memory /
    kill, wall time / stop) as for local sessions. A busy loop with ``--cpu 30%`` gets at most 30 % of a core
    (+15 %) on its node (the node monitor throttles it: it was only Ray's reservation, and took a whole core)."""
    c = rc
    spin = c.start(f"{ray_daemon.flows}:spin", cpu="30%")  # type: ignore[attr-defined]
    assert c.result(spin, timeout=60) <= 30 * 1.15  # type: ignore[attr-defined]
    mem = c.start("labd_testflows:memory_hog", params={"mb": 600}, memory="150M")  # type: ignore[attr-defined]
    slow = c.start(f"{ray_daemon.flows}:tick", timeout=2, placement={"on": "ray"})  # type: ignore[attr-defined]
    s = _ended(c, mem)
    assert s["status"] == "failed", s
    lim = _events(c, mem, ["limit.exceeded"])
    assert lim and lim[0]["payload"]["limit"] == "memory" and lim[0]["payload"]["action"] == "kill", lim
    s = _ended(c, slow)
    lim = _events(c, slow, ["limit.exceeded"])
    assert lim and lim[0]["payload"]["limit"] == "wall time" and lim[0]["payload"]["action"] == "stop", lim
    assert s["status"] in ("failed", "cancelled") and "wall time" in str(s.get("reason")), s


def test_a_deleted_sessions_directory_on_its_node_is_removed(ray_daemon: DaemonProc, rc: object) -> None:
    """A Ray session killed on its node leaves its directory there (work directory, the spool of what it had not
    delivered: the only copy of what it did since its last step); ``labd rm`` of the session removes it there too (a
    task pinned to the node), and only it: another such session's directory on the same node stays. Nothing removed
    them before (node disks filled with the work of sessions long deleted)."""
    c = rc
    node = ray_daemon.home.parent / "node"
    gone, kept = (c.start(f"{ray_daemon.flows}:tick", placement={"on": "ray"})  # type: ignore[attr-defined]
                  for _ in range(2))
    for sid in (gone, kept):
        wait_until(lambda sid=sid: _events(c, sid, ["output"]), timeout=60, interval=0.1, what="running")
        c.kill(sid)  # type: ignore[attr-defined]
        assert _ended(c, sid)["status"] in ("cancelled", "failed", "lost"), _ended(c, sid)
        assert (node / sid / "work").is_dir()
    subprocess.run([sys.executable, "-m", "labd", "--home", str(ray_daemon.home), "rm", gone], check=True,
                   capture_output=True, timeout=60)
    wait_until(lambda: not (node / gone).exists(), timeout=60, interval=0.1, what="its node directory removed")
    assert (node / kept / "work").is_dir()
    wait_until(lambda: "a deleted session's directory on its Ray node" in ray_daemon.log(), timeout=30,
               interval=0.1, what="the removal reported in the daemon's log")


def test_cli_placement_and_infeasible_request(ray_daemon: DaemonProc, rc: object) -> None:
    """`labd run --on ray --gpus 8` asks Ray for 8 GPUs; no node of the cluster has them, so the session fails at
    launch with the reason instead of waiting forever in Ray's queue. `--on local --gpus 1` is refused as a bad
    request (GPUs are a Ray resource request)."""
    c = rc
    env = {**os.environ}

    def labd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labd", "--home", str(ray_daemon.home), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    run = labd("run", f"{ray_daemon.flows}:tick", "--on", "ray", "--gpus", "8", "--resource", "head=1")
    assert run.returncode == 0, run.stderr
    sid = run.stdout.strip()
    s = _ended(c, sid)
    assert s["status"] == "failed" and "no node of the Ray cluster" in str(s.get("reason")), s
    created = _events(c, sid, ["session.created"])[0]["payload"]
    assert created["placement"] == {"on": "ray", "gpus": 8.0, "resources": {"head": 1.0}}
    bad = labd("run", f"{ray_daemon.flows}:tick", "--on", "local", "--gpus", "1")
    assert bad.returncode != 0 and "Ray resource requests" in bad.stderr, bad


def test_runner_endpoint_refuses_wrong_curve_key(ray_daemon: DaemonProc) -> None:
    """The TCP runner endpoint completes no handshake with a client whose key the daemon did not issue, nor with
    a plain (unencrypted) TCP client, even one that knows the daemon's public key."""
    log = ray_daemon.log()
    line = next(x for x in log.splitlines() if "runner endpoint on TCP" in x)
    endpoint = line.split('"endpoint":"')[1].split('"')[0]
    server_public = (ray_daemon.home / "curve" / "server.key").read_text().split('public-key = "')[1].split('"')[0]
    ctx = zmq.Context()
    try:
        def attempt(curve: bool) -> set[int]:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if curve:
                pub, sec = zmq.curve_keypair()
                s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_public.encode(), pub, sec
            mon = s.get_monitor_socket()
            s.connect(endpoint)
            seen: set[int] = set()
            deadline = time.monotonic() + 5
            from zmq.utils.monitor import recv_monitor_message

            while time.monotonic() < deadline and not seen & {zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                                                              zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                                              zmq.EVENT_HANDSHAKE_SUCCEEDED}:
                if mon.poll(200):
                    seen.add(recv_monitor_message(mon)["event"])
            s.disable_monitor()
            mon.close(0)
            s.close(0)
            return seen

        wrong = attempt(curve=True)
        assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in wrong and zmq.EVENT_HANDSHAKE_SUCCEEDED not in wrong, wrong
        plain = attempt(curve=False)
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in plain, plain
    finally:
        ctx.destroy(0)


def test_files_are_shipped_after_each_step_while_the_session_runs(ray_daemon: DaemonProc, rc: object) -> None:
    """A Ray session's files reach the daemon at each checkpoint, not only at the end: while step two waits for
    an approval, step one's file is already in the daemon's copy of the work directory; a file deleted on the
    node in step two is gone from the copy at the end; a script made executable there is executable at home. The
    files go without their bytes: the daemon copies them from the checkpoint objects the runner shipped first."""
    c = rc
    sid = c.start(f"{ray_daemon.flows}:stepped")  # type: ignore[attr-defined]
    work = ray_daemon.home / "sessions" / sid / "work"
    wait_until(lambda: _events(c, sid, ["approval.requested"]), timeout=60, interval=0.1, what="step two waits")
    assert (work / "first.txt").read_text() == "step one's result\n"
    assert (work / "scratch.txt").exists()
    assert (work / "run.sh").stat().st_mode & 0o777 == 0o755  # executable on the node: so at home
    assert subprocess.run([str(work / "run.sh")], capture_output=True, text=True).stdout == "ran\n"
    c.resolve(sid, "yes")  # type: ignore[attr-defined]
    assert _ended(c, sid)["status"] == "completed"
    assert (work / "first.txt").exists() and not (work / "scratch.txt").exists()
    events = [e["payload"] for e in _events(c, sid, ["file.shipped"]) if not e["payload"].get("deleted")]
    assert [p["path"] for p in events].count("first.txt") == 1  # unchanged after step one: not shipped again
    # each went as a range of its checkpoint object, which had gone home just before: its bytes travelled once
    assert events and all(p.get("from_object") and not p.get("error") for p in events), events


def test_an_object_the_home_could_not_keep_is_shipped_again_by_the_ray_runner(ray_daemon: DaemonProc, rc: object,
                                                                              tmp_path: Path) -> None:
    """The home cannot keep a Ray session's checkpoint object (its write fails, as on a full disk): the daemon tells
    the runner (``objects.missing``), and once the home has room the runner's next step ships that object again and
    the file made of it, so the home's object store and its copy of the work directory are whole at the end. Before,
    the object was never sent again: the file stayed missing at home, and the checkpoint could not be resumed from.
    (The daemon sends ``objects.missing`` right after the commit this test sees, on the same thread, and the workflow
    looks for ``again`` every 50 ms: the runner has the message before its next step ships.)"""
    import hashlib
    import shutil

    c = rc
    content = f"content of {tmp_path.name}\n"  # its own object: no other session's
    digest = hashlib.sha256(content.encode()).hexdigest()
    go, again = tmp_path / "go", tmp_path / "again"
    sid = c.start(f"{ray_daemon.flows}:lost_object",  # type: ignore[attr-defined]
                  params={"content": content, "go": str(go), "again": str(again)})
    session = ray_daemon.home / "sessions" / sid
    obstacle = session / "checkpoints" / "objects" / digest[:2] / f"{digest}.labd-part"
    obstacle.mkdir(parents=True)  # the object's partial file cannot be written
    go.touch()

    def failed() -> list[dict]:
        return [e["payload"] for e in _events(c, sid, ["checkpoint.object"])
                if e["payload"].get("error") and e["payload"]["name"] == f"{digest[:2]}/{digest}"]
    wait_until(failed, timeout=60, interval=0.1, what="the object refused at home")
    shutil.rmtree(obstacle)  # room again
    again.touch()
    assert _ended(c, sid)["status"] == "completed"
    assert (session / "checkpoints" / "objects" / digest[:2] / digest).read_text() == content
    assert (session / "work" / "data.txt").read_text() == content and (session / "work" / "other.txt").exists()
    logs = [str(e["payload"].get("event")) for e in _events(c, sid, ["log"])]
    assert any("not kept at home; 1 shipped again" in line for line in logs), logs  # the session says so


def test_a_ray_runner_crash_is_recorded_and_its_descriptor_limit_is_the_sessions(ray_daemon: DaemonProc,
                                                                                  rc: object) -> None:
    """As for a runner of this machine: a Ray runner that segfaults ends ``failed`` with the fault's text (Python's
    fatal error report, read from its crash file on the node by its actor) in ``session.ended``'s
    ``runner_stderr`` and in its reason; and a Ray runner runs under ``[daemon] session_nofile`` (4096 by default,
    soft = hard). Before, a Ray runner's crash text went to the Ray worker's log only, and its limit was the
    actor's."""
    c = rc
    sid = c.start(f"{ray_daemon.flows}:crash", placement={"on": "ray"})  # type: ignore[attr-defined]
    s = _ended(c, sid)
    assert s["status"] == "failed" and "SIGSEGV" in str(s.get("reason")), s
    assert "Fatal Python error: Segmentation fault" in str(s["reason"]), s
    ended = _events(c, sid, ["session.ended"])[0]["payload"]
    assert "Fatal Python error: Segmentation fault" in str(ended.get("runner_stderr")), ended  # type: ignore[union-attr]
    sid = c.start(f"{ray_daemon.flows}:nofile", placement={"on": "ray"})  # type: ignore[attr-defined]
    assert _ended(c, sid)["status"] == "completed"
    finished = _events(c, sid, ["session.finished"])[0]["payload"]
    assert finished["result"] == [4096, 4096], finished  # type: ignore[index]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_ray_runners_spawned_workers_have_the_context(ray_daemon: DaemonProc, rc: object, method: str) -> None:
    """As on this machine (tests/integration/test_spawned.py): a Pool of ``method`` workers started by a workflow that
    runs on a Ray node has the session's context (its steps, custom events and agents' LLM calls are recorded
    through the runner, the runner's ``src_seq`` gap-free). Before, a Ray runner's spawned process imported the
    runner's main module (``labd.runner.remote``), which did not attach it: ``labd.context()`` failed there."""
    c = rc
    sid = c.start("labd_forkflows:spawned_agents", params={"method": method, "tasks": 2},  # type: ignore[attr-defined]
                  placement={"on": "ray"})
    s = _ended(c, sid, timeout=110)
    assert s["status"] == "completed", s
    evs = _events(c, sid)
    result = next(e for e in evs if e["kind"] == "session.finished")["payload"]["result"]
    assert [r["i"] for r in result] == [0, 1] and all(r["answered"] and not r["in_env"] for r in result), result
    runner = [e for e in evs if e["src"] == "runner"]
    assert [e["src_seq"] for e in runner] == list(range(1, len(runner) + 1))
    steps = {e["payload"]["name"]: e for e in evs if e["kind"] == "step.started"}
    assert all(steps[f"worker {i}"]["payload"]["parent_node"] == steps["fan out"]["node_id"] for i in range(2))
    assert sorted(e["payload"]["data"]["i"] for e in evs if e["kind"] == "custom") == [0, 1]
    assert len([e for e in evs if e["kind"] == "llm.response"]) == 4  # ctx.agent's and a plain ag2.Agent's, each


def test_a_resume_sent_to_its_node_holds_up_no_other_request_of_the_driver(ray_cluster: dict[str, object],
                                                                           tmp_path: Path) -> None:
    """The Ray driver creates actors on spawner threads: while a resume's 64 MiB of checkpoint objects are read from
    the home and sent with its actor, the driver answers another request (an adoption) at once, and the spawn after;
    a SIGKILL sent meanwhile is held until the actor exists, then ends it (not placed yet: its actor is killed).
    Before, the driver's one loop read and sent them first, and every other session's request waited. Two spawns of
    one session (a retry) are made one after the other (review helper-155: on two threads at once the second failed,
    its name taken by the first)."""
    import json
    import queue
    import threading

    from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore
    from tests.support.ray_cluster import rayctl

    session = tmp_path / "home" / "sessions" / "s-big"
    store = ObjectStore(session / OBJECTS_DIR)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 << 20))
    digest, _ = store.put_file(big, hashlib.sha256(big.read_bytes()).hexdigest())
    (session / "durable.seed.json").write_text(json.dumps(
        {"steps": {}, "manifest": None, "files": {"big.bin": [digest, 64 << 20, 0o644]}}))
    namespace = "labd-spawner-test"
    driver = subprocess.Popen([sys.executable, "-m", "labd.daemon.ray_driver", str(ray_cluster["address"]), namespace],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                              env=ray_cluster["env"])  # type: ignore[arg-type]
    assert driver.stdin is not None and driver.stdout is not None
    said: list[dict[str, object]] = []
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, driver.stdout), lines.put(None)],  # type: ignore[arg-type]
                     daemon=True).start()

    def next_said(*ops: str) -> dict[str, object]:
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                raise AssertionError(f"the driver said no {ops} within 60 s; it said {said}") from None
            if line is None:
                raise AssertionError(f"the driver ended; it said {said}")
            msg = json.loads(line)
            said.append(msg)
            if msg.get("op") in ops:
                return msg  # type: ignore[no-any-return]

    try:
        assert next_said("ready", "error")["op"] == "ready", said
        for msg in ({"op": "spawn", "req": 1, "handle": -1, "sid": "s-big", "options": {"num_cpus": 0},
                     "spec": {"session_id": "s-big", "carry_from": str(session), "durable": True}},
                    {"op": "adopt", "req": 2, "handle": -2, "sid": "s-none"},
                    {"op": "signal", "handle": -1, "sig": signal.SIGKILL}):
            driver.stdin.write(json.dumps(msg) + "\n")
        driver.stdin.flush()
        first = next_said("spawned", "adopted")
        assert first["op"] == "adopted" and first["req"] == 2 and first.get("absent"), said
        spawned = next_said("spawned")
        assert spawned["req"] == 1 and "error" not in spawned, said
        exited = next_said("exited")
        assert exited["handle"] == -1 and exited["signal"] == signal.SIGKILL, said
        wait_until(lambda: "labd-s-big" not in rayctl(ray_cluster, namespace, "list"), timeout=30,
                   what="the killed session's actor gone")
        # a spawn of the session again while its first is being made (the daemon's retry): one after the other, the
        # second freeing the name (the first actor killed: its session lost), never "the name is already taken"
        for req, handle in ((3, -3), (4, -4)):
            driver.stdin.write(json.dumps({"op": "spawn", "req": req, "handle": handle, "sid": "s-big",
                                           "options": {"num_cpus": 0}, "give_up_after": 120,
                                           "spec": {"session_id": "s-big", "carry_from": str(session),
                                                    "durable": True}}) + "\n")
        driver.stdin.flush()
        answers = [next_said("spawned"), next_said("spawned")]
        assert [a["req"] for a in answers] == [3, 4] and not any("error" in a for a in answers), said
        driver.stdin.write(json.dumps({"op": "signal", "handle": -4, "sig": signal.SIGKILL}) + "\n")
        driver.stdin.flush()
        def ended() -> set[object]:
            return {m["handle"] for m in said if m.get("op") == "exited"} & {-3, -4}

        while ended() != {-3, -4}:  # -3's may come before -4 is even answered: its actor is killed by -4's spawn
            next_said("exited")
        assert next(m for m in said if m.get("op") == "exited" and m["handle"] == -3)["reason"], said
        wait_until(lambda: "labd-s-big" not in rayctl(ray_cluster, namespace, "list"), timeout=30,
                   what="the second actor gone too")
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()


def test_a_resume_waiting_for_a_node_keeps_what_it_carries_after_its_driver_exits(ray_cluster: dict[str, object],
                                                                                 tmp_path: Path) -> None:
    """A resume whose actor waits for a node (the resource it asks for is held) when the Ray driver exits, as at a
    daemon restart, still gets its 16 MiB of checkpoint objects: once placed, the actor writes them into its session
    directory on the node, byte for byte. (They travel in the actor's creation arguments, which Ray keeps in its object
    store; the driver that put them there is gone by then.)"""
    import json

    from labd.runner.checkpoint import OBJECTS_DIR, ObjectStore
    from tests.support.ray_cluster import rayctl

    session = tmp_path / "home" / "sessions" / "s-wait"
    store = ObjectStore(session / OBJECTS_DIR)
    data = os.urandom(16 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    digest, _ = store.put_file(tmp_path / "big.bin", hashlib.sha256(data).hexdigest())
    (session / "durable.seed.json").write_text(json.dumps(
        {"steps": {}, "manifest": None, "files": {"big.bin": [digest, len(data), 0o644]}}))
    namespace = "labd-carry-wait-test"
    rayctl(ray_cluster, namespace, "hold", "holder", "head")
    node = tmp_path / "node"
    try:
        driver = subprocess.Popen([sys.executable, "-m", "labd.daemon.ray_driver", str(ray_cluster["address"]),
                                   namespace], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=str(REPO), env=ray_cluster["env"])  # type: ignore[arg-type]
        assert driver.stdin is not None and driver.stdout is not None
        said = [json.loads(driver.stdout.readline()) for _ in range(2)]
        assert said[-1]["op"] == "ready", said
        driver.stdin.write(json.dumps({"op": "spawn", "req": 1, "handle": -1, "sid": "s-wait",
                                       "options": {"num_cpus": 0, "resources": {"head": 1}},
                                       "spec": {"session_id": "s-wait", "carry_from": str(session), "durable": True,
                                                "node_dir": str(node)}}) + "\n")
        driver.stdin.flush()
        spawned = json.loads(driver.stdout.readline())
        assert spawned == {"op": "spawned", "req": 1}, spawned
        states = rayctl(ray_cluster, namespace, "states", "labd-s-wait")
        assert states["labd-s-wait"] in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"), states
        driver.stdin.close()  # the daemon going: its driver exits, the detached actor waits on
        assert driver.wait(timeout=60) == 0
        rayctl(ray_cluster, namespace, "kill", "holder")  # the resource frees: Ray places the actor
        objects = ObjectStore(node / "s-wait" / OBJECTS_DIR)
        wait_until(lambda: objects.complete(digest), timeout=60, what="the carried objects on the node")
        assert objects.get_verified(digest) == data
    finally:
        rayctl(ray_cluster, namespace, "killall")
