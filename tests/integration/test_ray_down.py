"""A Ray cluster that goes away while a daemon runs (``ray stop``, the head's host rebooting): the sessions Ray had
not placed yet end ``failed`` with why, instead of waiting in ``starting`` for good; those it had placed wait for the
cluster, as before (their runners may live on other nodes and reconnect).

A Ray review found a ``labd run --on ray --wait`` made in the minute after ``ray stop`` (the daemon's driver still
connected, as Ray gives a driver 60 s to find its control store again) hanging 20 minutes in ``starting``; after a
daemon restart the same session was recorded ``lost`` "while no daemon ran", which was false.

The cluster here is the test's own (a head it stops), not the shared one of tests/integration/test_ray.py. Ray's
60 s and labd's connect timeout are shortened by environment variables so that the test takes seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from labd.daemon.ray_adopt import actor_name, namespace
from tests.conftest import REPO, SUPPORT, DaemonProc, wait_until
from tests.support.ray_cluster import RayNode, free_port, rayctl

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
pytest.importorskip("ray")

ENDED = ("completed", "failed", "cancelled", "lost")


@pytest.fixture
def head() -> Iterator[tuple[RayNode, dict[str, Any]]]:
    """A one-node Ray cluster of this test's own (2 CPUs, one unit of resource ``slot``): the node, and
    ``{"address", "env"}`` as :func:`~tests.support.ray_cluster.rayctl` takes them."""
    temp = tempfile.mkdtemp(prefix="rayd", dir="/tmp")  # short: Unix socket paths are limited
    port = free_port()
    env = {**os.environ, "HOME": temp, "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}
    env.pop("XDG_RUNTIME_DIR", None)
    node = RayNode(["--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--temp-dir", temp, "--include-dashboard", "false", "--resources", '{"slot": 1}'], env)
    try:
        node.wait_up()
        yield node, {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        node.stop()
        subprocess.run(["rm", "-rf", temp], check=False)


def test_sessions_not_placed_fail_when_the_cluster_goes_away_and_placed_ones_wait(
        isolated_env: Path, head: tuple[RayNode, dict[str, Any]]) -> None:
    """Two sessions each ask for the cluster's one ``slot``: Ray places the first, the second waits in Ray's queue.
    The cluster is stopped. Once the daemon's driver has ended and a new one cannot connect, the second session
    ends ``failed``, saying Ray had not placed it and that the cluster stopped answering (a ``labd wait`` of it
    returns, as would a ``labd run --wait``); the first, placed, is never failed as unplaced: it is still waited for
    (``running``; ``labd kill`` ends it at once), or ``lost`` with Ray's account when the driver saw its actor die
    with the head first (a busy box: CI saw it)."""
    node, cluster = head
    address = cluster["address"]
    home = isolated_env
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[launcher]\nkind = "ray"\naddress = "{address}"\n'
                                      f'runner_listen = "tcp://127.0.0.1:0"\nnode_dir = "{home.parent}/node"\n')
    # a driver whose control store is gone ends after 5 s (Ray's 60 s), its successor gives up connecting after 10
    daemon = DaemonProc(home, extra_env={"RAY_gcs_rpc_server_reconnect_timeout_s": "5",
                                         "LABD_RAY_CONNECT_TIMEOUT_S": "10"}).start()
    try:
        with daemon.client() as c:
            on_slot = {"on": "ray", "resources": {"slot": 1}}
            placed = c.start("demo.sleep", placement=on_slot)
            wait_until(lambda: list(c.history(placed, kinds=["session.placed"])), timeout=90, interval=0.1,
                       what="the first session placed")
            waiting = c.start("demo.sleep", placement=on_slot)
            # its actor created (the spawn answered): it waits in Ray's queue
            public, _ = zmq.auth.load_certificate(str(home / "curve" / "server.key"))
            wait_until(lambda: rayctl(cluster, namespace(public), "states", actor_name(waiting))[actor_name(waiting)]
                       == "PENDING_CREATION", timeout=60, interval=0.5, what="the second actor waiting for a node")
            waiter = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(home), "wait", waiting],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            node.stop()
            s: dict[str, Any] = wait_until(lambda: (x := c.session(waiting))["status"] in ENDED and x, timeout=120,
                                           interval=0.2, what="the unplaced session ended")
            assert s["status"] == "failed", s
            reason = str(s.get("reason"))
            assert "Ray had not placed the session's actor" in reason and "stopped answering" in reason, s
            assert address in reason, s
            assert not list(c.history(waiting, kinds=["session.placed"]))
            out, err = waiter.communicate(timeout=30)
            assert waiter.returncode != 0 and "failed" in (out + err), (out, err)
            # placed: never failed as unplaced. It waits for the cluster (``running``), unless the driver saw its actor
            # die with the head before the driver itself lost the cluster (a busy box): then ``lost``, Ray's account
            first = c.session(placed)
            assert first["status"] in ("running", "lost"), first
            assert "had not placed" not in str(first.get("reason")), first
            if first["status"] == "running":
                kill = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), "kill", placed],
                                      capture_output=True, text=True, timeout=60)
                assert kill.returncode == 0, kill.stderr
                wait_until(lambda: c.session(placed)["status"] in ENDED, timeout=30, interval=0.1, what="killed")
    finally:
        daemon.stop()
