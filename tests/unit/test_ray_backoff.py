"""A Ray cluster that does not answer (Ray review): the launcher never waits for it. Its start returns once Ray is
imported (a daemon whose cluster was down did not start at all); a failed connection is tried again at most once per
backoff; meanwhile a launch fails at once, saying since when and why, and ``daemon.status`` shows it; sessions to
adopt wait for the cluster instead of being recorded lost. Each try used to hold the daemon's main loop until the
driver's start timeout, and every ``--on ray`` start tried again: the whole daemon froze ~70 s per start."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from labd.daemon.launcher import ExitInfo, LaunchError
from labd.daemon.ray_launcher import RayLauncher
from labd.daemon.ray_link import DOWN_BACKOFF_S
from tests.conftest import wait_until
from tests.support.ray_cluster import free_port

pytestmark = pytest.mark.timeout(120)
pytest.importorskip("ray")


def _drivers() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "labd.daemon.ray_driver" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
def ray(tmp_path: Path) -> Iterator[RayLauncher]:
    """A launcher whose cluster address nothing answers on, with a 3 s connect timeout."""
    launcher = RayLauncher(tmp_path, f"ipc://{tmp_path}/runners", 1 << 20,
                           {"kind": "ray", "address": f"127.0.0.1:{free_port()}",
                            "runner_listen": "tcp://127.0.0.1:0"}, timeout=3.0)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.shutdown()


def _one_driver() -> None:
    """Wait until one driver process runs: a driver just forked still shows the parent's command line until its
    exec, so a look at once can miss it (CI did)."""
    wait_until(lambda: len(_drivers()) == 1, timeout=10, interval=0.02, what="one Ray driver process")


def _down(ray: RayLauncher) -> list[ExitInfo]:
    """Pump the launcher (as the daemon's main loop does) until its driver's start has failed; the exits meanwhile."""
    exits: list[ExitInfo] = []

    def failed() -> bool:
        exits.extend(ray.drain_exits())
        return ray.link.state == "none" and ray.link.down is not None

    wait_until(failed, timeout=30, interval=0.05, what="the driver's start failed")
    return exits


def test_start_does_not_wait_for_the_cluster_and_a_failed_start_is_tried_once_per_backoff(ray: RayLauncher) -> None:
    """The launcher's start returns while its driver still connects; the driver that cannot connect is ended; a
    launch then fails at once, naming the cluster, since when and when it tries again, and starts no driver; the
    launcher's health says it is down."""
    assert ray.link.state == "starting"
    _one_driver()
    _down(ray)
    assert not _drivers()
    with pytest.raises(LaunchError) as again:
        ray.launch({"session_id": "s1", "workflow": "demo.sleep"})
    assert f"the Ray cluster at {ray.address} does not answer (since" in str(again.value)
    assert "labd tries again in" in str(again.value) and not _drivers()
    health = ray.health()
    assert health["down_since"] and not health["driver"] and 0 < health["retry_in"] <= DOWN_BACKOFF_S
    assert health["driver_state"] == "none"


def test_a_launch_held_while_the_driver_connects_fails_when_it_cannot(ray: RayLauncher) -> None:
    """A session launched while the driver still connects gets its handle at once; when the connection fails, its
    exit says the launch failed and why (the session ends ``failed``, as when a launch is refused)."""
    handle, _ = ray.launch({"session_id": "s1", "workflow": "demo.sleep"})
    assert handle < 0
    exits = _down(ray)
    [info] = [e for e in exits if e.pid == handle]
    assert info.failed is not None and f"the Ray cluster at {ray.address} does not answer" in info.failed


def test_sessions_to_adopt_wait_for_the_cluster_and_a_kill_ends_one_at_once(ray: RayLauncher) -> None:
    """Sessions to adopt while the cluster does not answer are not lost: each try fails and they wait, a new driver
    tried once the backoff has passed. A SIGKILL (``labd kill``, the end of a stop) of one of them ends it at once,
    with no driver to reach its actor; the other waits on."""
    a = ray.adopt("sa")
    b = ray.adopt("sb")
    assert a is not None and b is not None
    assert not [e for e in _down(ray) if e.pid in (a, b)]
    assert ray.health()["adopting"] == 2
    ray.link.retry_at = 0.0  # the backoff has passed
    ray.drain_exits()
    assert ray.link.state == "starting"
    _one_driver()  # tried again for them
    assert not [e for e in _down(ray) if e.pid in (a, b)]
    assert ray.signal(a, signal.SIGKILL)
    [info] = ray.drain_exits()
    assert info.pid == a and info.signal == signal.SIGKILL and info.failed is None
    assert ray.health()["adopting"] == 1
    assert not ray.signal(a, signal.SIGKILL)  # ended: not its to signal any more


def _fake(tmp_path: Path, lines: list[str]) -> RayLauncher:
    """A launcher whose driver is a script that prints ``lines`` (JSON) and exits at once."""
    launcher = RayLauncher(tmp_path, f"ipc://{tmp_path}/runners", 1 << 20,
                           {"kind": "ray", "address": "127.0.0.1:1", "runner_listen": "tcp://127.0.0.1:0"},
                           timeout=30.0)
    launcher.link.command = [sys.executable, "-c", "import sys\nfor line in sys.argv[1:]: print(line, flush=True)",
                             *lines]
    return launcher


def test_a_driver_that_says_why_and_ends_at_once_is_reported_with_its_reason(tmp_path: Path) -> None:
    """A driver that cannot connect prints why and exits: the launcher's state says the driver's reason even when its
    message and its end are read together (they were, and the reason was lost for "ended before it connected")."""
    ray = _fake(tmp_path, ['{"op": "loaded"}', '{"op": "error", "message": "cannot connect to Ray: refused"}'])
    ray.link.start()
    assert ray.link._proc is not None
    ray.link._proc.wait()  # both lines and the end are there before the first read
    failed = [m for m in ray.link.poll() if m.get("op") == "_failed"]
    assert failed == [{"op": "_failed", "error": "cannot connect to Ray: refused"}]
    assert ray.health()["error"] == "cannot connect to Ray: refused" and ray.link.state == "none"


def test_ray_not_installed_stops_the_start_even_when_the_driver_has_already_ended(tmp_path: Path) -> None:
    """The driver's "Ray is not installed" is fatal (the daemon does not start) also when the driver exited before
    the launcher read it (a busy box): it was taken for a start that failed, tried again every 15 s to 2 min."""
    ray = _fake(tmp_path, ['{"op": "error", "fatal": true, "message": "Ray is not installed: pip install labd[ray]"}'])
    ray.link.start()
    assert ray.link._proc is not None
    ray.link._proc.wait()
    with pytest.raises(LaunchError, match="Ray is not installed"):
        ray.link.wait_loaded()


def test_a_spawn_the_driver_never_answers_is_ended_then_forgotten(tmp_path: Path, monkeypatch) -> None:
    """A driver that is connected but never answers: the session launched through it ends ``failed`` after the
    spawn timeout, and the unanswered request is kept a while (a late success still kills its actor) but not for
    good: past ``FORGET_AFTER`` timeouts it is dropped (the table grew by every start while the driver hung)."""
    from labd.daemon import ray_launcher

    monkeypatch.setattr(ray_launcher, "FORGET_AFTER", 2)
    ray = _fake(tmp_path, ['{"op": "loaded"}', '{"op": "ready"}'])
    ray.link.command[2] += "\nimport time\ntime.sleep(120)"  # connected, then silent
    ray._timeout = 0.5
    ray.start()
    try:
        wait_until(lambda: (ray.drain_exits(), ray.link.state == "ready")[1], timeout=30, interval=0.05,
                   what="the driver connected")
        handle, _ = ray.launch({"session_id": "s1", "workflow": "demo.sleep"})
        exits: list[ExitInfo] = []
        wait_until(lambda: exits.extend(ray.drain_exits()) or any(e.pid == handle for e in exits), timeout=30,
                   interval=0.05, what="the spawn timed out")
        [info] = [e for e in exits if e.pid == handle]
        assert info.failed is not None and "did not answer the spawn request" in info.failed
        assert len(ray._requests) == 1  # kept for a late answer
        wait_until(lambda: (ray.drain_exits(), not ray._requests)[1], timeout=30, interval=0.05,
                   what="the unanswered request forgotten")
    finally:
        ray.shutdown()
