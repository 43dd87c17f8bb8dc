"""One real local Ray cluster for every Ray test module of a test session (tests/integration/test_ray*.py).

``ray start --head`` on 127.0.0.1 with 2 CPUs, in a process group of its own, started the first time a module asks
for it (:func:`shared_cluster`) and stopped when pytest ends (``config.add_cleanup``): two modules that each had
a session-scoped fixture of their own would otherwise run two clusters on a 2-core box. :class:`RayNode` is also
how a test adds a second (worker) node. :func:`rayctl` runs a short Ray driver in a subprocess (the test process
never imports Ray's client): list the named actors of a namespace, or kill one by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests.conftest import REPO, SUPPORT, wait_until

__all__ = ["RayNode", "shared_cluster", "rayctl"]

_KEY = "_labd_ray_cluster"

_CTL = r'''
import json, sys
import ray
address, namespace, op = sys.argv[1:4]
ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False)
if op == "list":
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]
    print(json.dumps(sorted(names)))
elif op == "kill":
    ray.kill(ray.get_actor(sys.argv[4], namespace=namespace), no_restart=True)
    print(json.dumps("killed"))
elif op in ("stray", "hold"):  # a detached actor no session owns (as a leak would leave); hold: taking resource X
    @ray.remote(num_cpus=0)
    class Stray:
        def ping(self):
            return True
    held = {"resources": {sys.argv[5]: 1}} if op == "hold" else {}
    actor = Stray.options(name=sys.argv[4], lifetime="detached", **held).remote()
    ray.get(actor.ping.remote())
    print(json.dumps("created"))
elif op == "states":  # the GCS actor table's state of each named actor (None: no such name)
    from ray._private.state import actors as actor_table
    states = {}
    for name in sys.argv[4:]:
        try:
            states[name] = actor_table(ray.get_actor(name, namespace=namespace)._actor_id.hex()).get("State")
        except ValueError:
            states[name] = None
    print(json.dumps(states))
elif op == "killall":
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]
    for name in names:
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    print(json.dumps(names))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayNode:
    """A ``ray start --block`` process group of our own (head or worker), stopped by its group id."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        ray_bin = str(Path(sys.executable).parent / "ray")
        self.proc = subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.output: list[str] = []
        self.up = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.decode(errors="replace")
            self.output.append(text)
            if "Ray runtime started" in text:
                self.up.set()

    def wait_up(self) -> None:
        """Wait until ``ray start`` says the node runs (fails with its last output if it exited instead)."""
        wait_until(lambda: self.up.is_set() or self.proc.poll() is not None, timeout=90, interval=0.1,
                   what="ray start")
        assert self.up.is_set(), "".join(self.output[-30:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL what is left, and reap ``ray start``."""
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)
        self.proc.wait(10)


def shared_cluster(config: Any) -> dict[str, Any]:
    """The test session's one-node cluster (2 CPUs, custom resource ``head``): ``{"address", "env", "temp"}``.
    Started on first use, stopped at the end of the test session."""
    cluster: dict[str, Any] | None = getattr(config, _KEY, None)
    if cluster is not None:
        return cluster
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Unix socket paths are limited
    port = free_port()
    env = {**os.environ, "HOME": temp, "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
           # node death is noticed in ~2 s instead of Ray's default ~15 s
           "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
           "RAY_health_check_initial_delay_ms": "500"}
    env.pop("XDG_RUNTIME_DIR", None)
    head = RayNode(["--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--temp-dir", temp, "--include-dashboard", "false", "--resources", '{"head": 1}'], env)

    def stop() -> None:
        head.stop()
        subprocess.run(["rm", "-rf", temp], check=False)

    config.add_cleanup(stop)
    head.wait_up()
    cluster = {"address": f"127.0.0.1:{port}", "env": env, "temp": temp}
    setattr(config, _KEY, cluster)
    return cluster


def rayctl(cluster: dict[str, Any], namespace: str, op: str, *args: str) -> Any:
    """Run a short Ray driver against ``cluster`` in ``namespace``: ``list`` (the names of its live named actors),
    ``kill NAME``, ``stray NAME`` (a detached actor no session owns), ``hold NAME RESOURCE`` (the same, holding one
    unit of RESOURCE), ``states NAME...`` (each one's state in Ray's
    actor table: ``PENDING_CREATION``, ``ALIVE``, ...) or ``killall``; returns what it printed (JSON)."""
    run = subprocess.run([sys.executable, "-c", _CTL, str(cluster["address"]), namespace, op, *args],
                         env=cluster["env"], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
