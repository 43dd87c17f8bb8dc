"""The Ray actor that hosts one session on a cluster node (the Ray launcher's remote half).

The launcher's driver (:mod:`labd.daemon.ray_driver`) creates one :class:`SessionActor` per session with the
session's resource request (``num_cpus``, ``num_gpus``, ``memory``, custom resources), so Ray chooses the node.
The actor is a plain Python class here (Ray wraps it with ``ray.remote`` in the driver), and it does three things:

- :meth:`start`: moves the session's work directory to the node (``<node dir>/<session>/work``) and starts the
  ordinary runner as a child process (``python -m labd.runner.remote``, spec on stdin, its own process group):
  the same code as a local runner, with the channel on TCP + CurveZMQ and ``ship_files`` set;
- runs a :class:`~labd.runner.node_monitor.NodeMonitor` on that child's tree (limits enforced on the node);
- answers :meth:`wait` (a long poll: returns on exit or after ``timeout`` with the monitor's notes) and
  :meth:`signal` (the daemon's stop ladder: SIGTERM / SIGKILL / SIGCONT to the runner's group).

The actor is detached (it outlives the daemon's Ray driver): a restarted daemon finds it by name, asks
:meth:`describe`, and polls :meth:`wait` again; what happened meanwhile (the runner's exit status, the monitor's
notes) waits in the actor for it.

The runner is a child, not the actor process itself: the runner replaces fds 1 and 2, installs signal handlers,
changes directory and environment and may be confined with Landlock -- none of which a Ray worker survives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from labd.runner.crash_tail import CRASH_FILE, read_tail
from labd.runner.node_monitor import NodeMonitor

__all__ = ["SessionActor", "node_dir"]


def node_dir(spec: dict[str, Any]) -> Path:
    """Where sessions live on this node: ``spec["node_dir"]`` or ``<tmp>/labd-ray-<uid>`` (0700)."""
    base = Path(spec.get("node_dir") or Path(tempfile.gettempdir()) / f"labd-ray-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


class SessionActor:
    """One session's runner on this node (used through ``ray.remote(max_concurrency=4)``)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.proc: subprocess.Popen[bytes] | None = None
        self.monitor: NodeMonitor | None = None
        self._exited = threading.Event()
        self.session_dir: Path | None = None

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start the runner; returns where it runs (node id, ip, hostname, pid, work directory)."""
        session_dir = node_dir(spec) / self.sid
        session_dir.mkdir(mode=0o700, exist_ok=True)
        self.session_dir = session_dir
        workdir = session_dir / "work"
        spec = {**spec, "workdir": str(workdir), "spool": str(session_dir / "events.spool")}
        carry = spec.pop("carry", None)
        if carry:  # a resume or branch: its seed and checkpoint objects, from the daemon's home (runner/carry.py)
            from labd.runner.carry import unpack
            from labd.runner.checkpoint import OBJECTS_DIR

            unpack(session_dir, carry)
            # the objects it came with are at home (it read them there): the runner's files made of them go as ranges
            prefix = f"{OBJECTS_DIR}/"
            spec["at_home"] = [rel[len(prefix):] for rel in carry if rel.startswith(prefix)]
            if spec.get("replay_seed"):  # a replay's seed: its copy on this node (the home's path names nothing here)
                spec["replay_seed"] = str(session_dir / Path(str(spec["replay_seed"])).name)
        if spec.get("confine"):  # the runner's own Landlock: its session directory is the one on this node
            spec["confine"] = {**spec["confine"], "allow": [str(session_dir)]}
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        started = threading.Event()
        failure: list[BaseException] = []

        def spawn_and_reap() -> None:
            # Started from this long-lived thread: the runner's parent-death signal fires when the thread that
            # forked it ends, so it must be the thread that lives exactly as long as the runner.
            try:
                self.proc = subprocess.Popen([sys.executable, "-P", "-m", "labd.runner.remote"], stdin=subprocess.PIPE,
                                             env=env, cwd=str(session_dir), start_new_session=True, close_fds=True,
                                             preexec_fn=_die_with_parent)
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                failure.append(exc)
                started.set()
                return
            started.set()
            self.proc.wait()
            self._exited.set()

        threading.Thread(target=spawn_and_reap, name="labd-reap", daemon=True).start()
        started.wait()
        if failure:
            raise failure[0]
        assert self.proc is not None and self.proc.stdin is not None  # noqa: S101 - Popen with stdin=PIPE
        self.proc.stdin.write(json.dumps(spec).encode())
        self.proc.stdin.close()
        limits = spec.get("limits") or {}
        self.monitor = NodeMonitor(self.proc.pid, limits, time.time(),
                                   record_interval=float(spec.get("record_interval") or 2.0))
        self.monitor.start()
        node = ""
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray (tests of the class itself)
            pass
        return {"node": node, "ip": _ip(), "hostname": socket.gethostname(), "pid": self.proc.pid,
                "workdir": str(workdir), "actor_pid": os.getpid()}

    def describe(self) -> dict[str, Any]:
        """Where the runner runs and whether it has exited (a restarted daemon's check before it adopts)."""
        return {"started": self.proc is not None, "exited": self._exited.is_set(),
                "pid": self.proc.pid if self.proc is not None else None, "actor_pid": os.getpid()}

    def wait(self, timeout: float) -> dict[str, Any]:
        """Return when the runner has exited or after ``timeout`` s: ``{"exited", "exit_code", "signal", "notes",
        "crash"}``; ``crash``: the end of the runner's crash file ``[text, cut]`` when it exited on a signal or a
        non-zero code (runner/crash_tail.py), else None."""
        self._exited.wait(timeout)
        notes = self.monitor.take_notes() if self.monitor else []
        if not self._exited.is_set() or self.proc is None:
            return {"exited": False, "notes": notes}
        if self.monitor is not None:
            self.monitor.stop()
            if self.monitor.peak_rss:  # the peaks once more (a short session may never reach a periodic sample)
                notes.append(("event", "resource.sample", self.monitor.sample() | {"num_procs": 0}))
        code = self.proc.returncode
        crash = read_tail(self.session_dir / CRASH_FILE) if code and self.session_dir is not None else None
        if self.session_dir is not None and not (self.session_dir / "events.spool").exists():
            # everything was delivered (the runner removes its spool only then), files included: nothing to keep
            shutil.rmtree(self.session_dir, ignore_errors=True)
        return {"exited": True, "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                "notes": notes, "crash": crash}

    def signal(self, sig: int) -> bool:
        """Signal the runner's process group (and its whole tree, for SIGKILL/SIGTERM); False if it is gone."""
        if self.proc is None or self._exited.is_set():
            return False
        if sig in (signal.SIGTERM, signal.SIGKILL) and self.monitor is not None:
            self.monitor.kill_tree(sig)
            return True
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def _die_with_parent() -> None:
    """In the runner child before exec: SIGKILL when the actor dies (a lost node or ``ray.kill`` must not leave a
    runner behind, still writing as a session the daemon has declared lost)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _ip() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001
        return "127.0.0.1"
