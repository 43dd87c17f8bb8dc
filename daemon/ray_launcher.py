"""The Ray launcher: each session in its own Ray actor on some node of a cluster (``[launcher] kind = "ray"``).

Behind the launcher seam (:class:`labd.daemon.launcher.Launcher`), with what a remote launcher adds to it:

- **handles, not pids**: the supervisor keys runners by the int :meth:`launch` returns; a Ray session's is a
  negative *handle* (never a local pid), and :meth:`Launchers.is_remote` tells the supervisor not to watch it in the
  local process table. Where it runs is reported as a ``session.placed`` event (node, ip, pid there, work dir).
- **liveness from the launcher**: :meth:`drain_exits` reports the runner's exit status as the actor saw it, or
  ``reason`` when the actor or its node was lost (Ray's account) -- the session ends ``lost`` with that reason.
- **limits from the node**: :meth:`drain_notes` yields the node monitor's notes (``limit`` breaches and
  ``resource.sample`` events), in the formats of the local monitor's.

The runner connects back over TCP with CurveZMQ (:class:`labd.daemon.runner_gateway.RunnerGateway`): a keypair per
session, authorised for the session's lifetime, the daemon's public key pinned in the runner's spec. Ray itself runs
in a child process (:mod:`labd.daemon.ray_driver`) spoken to in JSON lines, so the daemon never imports Ray.

Sessions outlive the daemon: their actors are detached, and a restarted daemon takes each one back (placed, or
still waiting for a node) with :meth:`RayLauncher.adopt` (what that needs is in :mod:`labd.daemon.ray_adopt`); a
driver that dies while the daemon runs is replaced and its sessions adopted again. The actor of a session that ended
is killed; a periodic sweep kills any actor of this home's namespace that no running session owns.

:class:`Launchers` routes between the template launcher and this one per session (``labd run --on ray|local``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from labd.daemon import ray_adopt
from labd.daemon.launcher import ExitInfo, LaunchError, TemplateLauncher, readable
from labd.daemon.ray_placement import PlacementError, placement_from, ray_options
from labd.daemon.runner_gateway import RunnerGateway

__all__ = ["RayLauncher", "Launchers", "placement_from", "PlacementError", "NO_RAY"]

#: why a session asked to run on Ray cannot (refused at session.start; a launch says it too, e.g. after a restart
#: with another configuration)
NO_RAY = 'this daemon has no Ray launcher: set [launcher] kind = "ray" and address in its config, then restart it'

DOWN_BACKOFF_S = 15.0  # after a driver start the cluster did not answer, the next is tried this much later ...
DOWN_BACKOFF_MAX_S = 120.0  # ... doubling up to this
SHIP_MAX_BYTES = 1 << 30  # at most this much of a work directory is shipped back (files beyond are named)
#: how long a remote runner whose workflow ended waits for the daemon to acknowledge its last events (its spool is
#: on the node, out of the daemon's reach: it waits for a daemon that is being restarted rather than exit)
REMOTE_FLUSH_TIMEOUT_S = 24 * 3600.0
SWEEP_S = 300.0  # how often the driver kills actors of this home that no running session owns


class RayLauncher:
    """Sessions as Ray actors; the Ray client runs in a driver child process."""

    def __init__(self, home: Path, runners_local: str, max_message: int, settings: dict[str, Any],
                 env: dict[str, str] | None = None, timeout: float = 60.0, session_nofile: int = 0) -> None:
        self.address = str(settings.get("address") or "auto")
        self.listen = str(settings.get("runner_listen") or "tcp://0.0.0.0:0")
        self.advertise = settings.get("advertise")
        self.node_dir = settings.get("node_dir")
        self.ship_max = int(settings.get("ship_max_bytes") or SHIP_MAX_BYTES)
        self.session_nofile = session_nofile  # [daemon] session_nofile, set by each runner on its node (0: as is)
        self._env = dict(os.environ if env is None else env)
        self._timeout = timeout
        self.home = home
        self._any_port = self.listen.rpartition(":")[2] in ("0", "*")
        self._remembered = ray_adopt.remembered_ports(home) if self._any_port else []
        self.gateway = RunnerGateway(home, self.listen, runners_local, max_message, prefer_ports=self._remembered,
                                     adopting=True)
        self.namespace = ray_adopt.namespace(self.gateway.public)
        self._restarting = False
        #: the Ray cluster did not answer a driver start: (since, error); no new start is tried before _retry_at
        self._down: tuple[float, str] | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._swept = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._replies: list[dict[str, Any]] = []
        self._exits: list[ExitInfo] = []
        self._notes: list[tuple[Any, ...]] = []
        self._sid: dict[int, str] = {}
        self._next = 0
        self._req = 0
        self.endpoint = ""
        self.log = structlog.get_logger("labd.ray")

    def start(self) -> None:
        self.gateway.start()
        self.gateway.ready.wait(10)
        if self.gateway.error is not None:
            raise LaunchError(f"cannot listen for remote runners on {self.listen}: {self.gateway.error}")
        host, _, port = self.gateway.endpoint[len("tcp://"):].rpartition(":")
        if self.advertise:
            host = str(self.advertise)
        elif host in ("0.0.0.0", "*", ""):
            host = socket.gethostbyname(socket.gethostname())
        self.endpoint = f"tcp://{host}:{port}"
        if self._any_port:  # the next daemon binds them again: the runners running now dial these ports
            # the port bound first; a remembered one that was taken stays remembered (its runners dial it: the
            # gateway binds it too once it is free, and so will the next daemon)
            ray_adopt.remember_ports(self.home, [int(port), *self._remembered])
        self._start_driver()

    def _driver(self) -> None:
        """A driver process, started if there is none. While the cluster does not answer, a start is tried at most
        once per backoff (15 s, doubling to 2 min): each try holds the daemon's main loop until the driver's start
        timeout, and every `--on ray` start tried again (a Ray outage froze the whole daemon ~70 s per start: Ray
        review). Between tries a launch fails at once, saying since when and why."""
        if self._proc is not None:
            return
        now = time.monotonic()
        if self._down is not None and now < self._retry_at:
            since, error = self._down
            raise LaunchError(f"the Ray cluster at {self.address} does not answer (since "
                              f"{time.strftime('%H:%M:%S', time.localtime(since))}: {error}); labd tries again in "
                              f"{self._retry_at - now:.0f} s")
        try:
            self._start_driver()
        except LaunchError as exc:
            self._backoff = min(DOWN_BACKOFF_MAX_S, max(DOWN_BACKOFF_S, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            if self._down is None:
                self._down = (time.time(), str(exc)[:300])
            self.log.error("the Ray cluster does not answer", address=self.address, error=str(exc)[:300],
                           next_try_s=self._backoff)
            raise
        self._down, self._backoff = None, 0.0

    def health(self) -> dict[str, Any]:
        """The launcher's state for ``daemon.status``: its address, whether its driver runs, and while the cluster
        does not answer since when, why, and when the next start is tried."""
        out: dict[str, Any] = {"address": self.address, "driver": self._proc is not None and self._proc.poll() is None,
                               "endpoint": self.endpoint, "waiting_ports": list(self.gateway.waiting_ports)}
        if self._down is not None:
            out.update(down_since=self._down[0], error=self._down[1],
                       retry_in=max(0.0, self._retry_at - time.monotonic()))
        return out

    def _start_driver(self) -> None:
        self._buf = b""
        self._proc = subprocess.Popen([sys.executable, "-P", "-m", "labd.daemon.ray_driver", self.address,
                                       self.namespace],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._env,
                                      start_new_session=True, close_fds=True)
        assert self._proc.stdout is not None  # noqa: S101 - Popen contract
        os.set_blocking(self._proc.stdout.fileno(), False)
        first = self._wait_for(lambda m: m.get("op") in ("ready", "error"))
        if first is None or first["op"] == "error":
            self._stop_driver()
            raise LaunchError((first or {}).get("message") or f"the Ray driver did not start (address {self.address})")
        self.log.info("Ray launcher ready", address=self.address, ray=first.get("ray"), nodes=first.get("nodes"),
                      runner_endpoint=self.endpoint)

    def fileno(self) -> int | None:
        return self._proc.stdout.fileno() if self._proc and self._proc.stdout else None

    def _send(self, msg: dict[str, Any]) -> None:
        if self._proc is None or self._proc.poll() is not None or self._proc.stdin is None:
            raise LaunchError("the Ray driver is not running")
        self._proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self._proc.stdin.flush()

    def _read_available(self) -> None:
        if self._proc is None or self._proc.stdout is None:
            return
        while True:
            try:
                chunk = os.read(self._proc.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._driver_gone()
                return
            self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:  # something Ray printed: not ours
                continue
            self._on_report(msg)

    def _on_report(self, msg: dict[str, Any]) -> None:
        op, raw = msg.get("op"), msg.get("handle")
        handle = raw if isinstance(raw, int) else 0
        sid = self._sid.get(handle)
        if op == "exited" and sid is not None:
            self.gateway.revoke(sid)
            del self._sid[handle]
            crash = msg.get("crash")  # [text, cut] read on the node: checked, and bounded again by the supervisor
            tail = (crash[0], bool(crash[1])) if isinstance(crash, list) and len(crash) == 2 and isinstance(
                crash[0], str) else None
            self._exits.append(ExitInfo(handle, msg.get("exit_code"), msg.get("signal"), msg.get("reason"), tail))
        elif op == "placed" and sid is not None:
            keys = ("node", "ip", "pid", "workdir", "hostname", "actor_pid")
            info = {k: msg[k] for k in keys if msg.get(k) is not None}
            self._notes.append(("event", sid, "session.placed", {"actor": ray_adopt.actor_name(sid), **info}))
        elif op == "note" and sid is not None:
            note = msg["note"]
            if note[0] == "limit":
                self._notes.append(("limit", sid, note[1]))
            elif note[0] == "event":
                self._notes.append(("event", sid, note[1], note[2]))
        elif op not in ("exited", "placed", "note"):
            self._replies.append(msg)

    def _driver_gone(self) -> None:
        """The driver died. Its actors are detached and run on: a new driver adopts them again; a session that
        cannot be adopted (no new driver, or its actor gone) is lost, with the reason."""
        self._close_dead_driver()
        if self._restarting:  # a driver that died while starting: the start fails (LaunchError)
            return
        watched, self._sid = dict(self._sid), {}
        if not watched:
            return
        self.log.warning("the Ray driver process ended: starting a new one to adopt its sessions",
                         sessions=sorted(watched.values()))
        self._restarting = True
        try:
            self._driver()
        except LaunchError as exc:
            for handle, sid in watched.items():
                self.gateway.revoke(sid)
                self._exits.append(ExitInfo(handle, None, None, f"the Ray driver process ended and no new one "
                                                                f"could start: {exc}"[:500]))
            return
        finally:
            self._restarting = False
        for handle, sid in watched.items():
            why = self._adopt_as(handle, sid)
            if why is not None:
                self._exits.append(ExitInfo(handle, None, None, why))
            else:  # in the session's history, not only the daemon's log
                self._notes.append(("event", sid, "session.adopted", {
                    "pid": 0, "reason": "the daemon's Ray driver process ended; a new driver adopted the actor"}))

    def _close_dead_driver(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        self._proc = None

    def _wait_for(self, pred: Any) -> dict[str, Any] | None:
        deadline = time.monotonic() + self._timeout
        while self._proc is not None:
            self._read_available()
            for i, msg in enumerate(self._replies):
                if pred(msg):
                    del self._replies[i]
                    return msg
            if time.monotonic() >= deadline or self._proc is None:
                return None
            fd = self.fileno()
            if fd is not None:
                readable(fd, 0.2)  # poll(), not select(): the daemon's fds may be above 1024
        return None

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        sid = spec["session_id"]
        self._next -= 1
        handle, self._req = self._next, self._req + 1
        req = self._req
        remote = {**spec, "endpoint": self.endpoint, "curve": self.gateway.authorize(sid), "ship_files": self.ship_max,
                  "record_interval": spec.get("record_interval") or 2.0,
                  "flush_timeout": spec.get("flush_timeout") or REMOTE_FLUSH_TIMEOUT_S,
                  "session_nofile": self.session_nofile}
        if self.node_dir:
            remote["node_dir"] = self.node_dir
        self._sid[handle] = sid
        try:
            self._driver()  # the driver died (its sessions were reported lost): a new one for this session
            self._send({"op": "spawn", "req": req, "handle": handle, "sid": sid, "spec": remote,
                        "options": ray_options(spec)})
            reply = self._wait_for(lambda m: m.get("op") == "spawned" and m.get("req") == req)
        except (LaunchError, OSError) as exc:
            reply = {"error": str(exc)}
        if reply is None or reply.get("error"):
            self._sid.pop(handle, None)
            self.gateway.revoke(sid)
            raise LaunchError((reply or {}).get("error") or "the Ray driver did not answer the spawn request")
        return handle, time.time()

    def adopt(self, sid: str) -> tuple[int | None, str | None]:
        """Take back session ``sid``'s actor, left running by a previous daemon (or driver): ``(handle, None)``,
        or ``(None, why it is lost)`` when its actor is not found, dead, or never started its runner. An actor
        still waiting for a node is adopted as it waits (the session stays ``starting``; ``session.placed`` comes
        when Ray places it, an exit with Ray's reason if it dies first)."""
        self._next -= 1
        handle = self._next
        why = self._adopt_as(handle, sid)
        return (None, why) if why is not None else (handle, None)

    def _adopt_as(self, handle: int, sid: str) -> str | None:
        self._req += 1
        req = self._req
        self.gateway.readmit(sid)  # its runner reconnects with the key derived for it
        self._sid[handle] = sid
        try:
            self._driver()
            self._send({"op": "adopt", "req": req, "handle": handle, "sid": sid})
            reply = self._wait_for(lambda m: m.get("op") == "adopted" and m.get("req") == req)
        except (LaunchError, OSError) as exc:
            reply = {"error": f"cannot reach the Ray cluster to adopt the session's actor: {exc}"[:500]}
        if reply is None or reply.get("error"):
            self._sid.pop(handle, None)
            self.gateway.revoke(sid)
            return str((reply or {}).get("error") or "the Ray driver did not answer the adoption request")
        self.log.info("Ray session adopted", session_id=sid, actor=ray_adopt.actor_name(sid),
                      **({"waiting": reply["waiting"]} if reply.get("waiting") else {}))
        return None

    def drain_exits(self) -> list[ExitInfo]:
        if not self.gateway.keys.settled.is_set() and self._any_port and not self._sid:
            # nothing adopted: no runner dials an older port; keep only this one (they piled up to 4, and one taken
            # was tried for good: it could take another home's port while that daemon restarted)
            self.gateway.forget_waiting()
            ray_adopt.remember_ports(self.home, [int(self.endpoint.rpartition(":")[2])])
        self.gateway.settle()  # called first from the main loop, after every adoption: unknown keys refused now
        self._read_available()
        if time.monotonic() - self._swept > SWEEP_S and self._proc is not None:
            # first from the main loop (after every session was adopted), then now and then: actors left by
            # sessions that ended (or were deleted) while no daemon could end them are killed
            self._swept = time.monotonic()
            try:
                self._send({"op": "sweep"})
            except (LaunchError, OSError):
                pass
        exits, self._exits = self._exits, []
        return exits

    def drain_notes(self) -> list[tuple[Any, ...]]:
        self._read_available()
        notes, self._notes = self._notes, []
        return notes

    def signal(self, pid: int, sig: int) -> bool:
        if pid not in self._sid:
            return False
        try:
            self._send({"op": "signal", "handle": pid, "sig": int(sig)})
        except (LaunchError, OSError):
            return False
        return True

    def shutdown(self) -> None:
        self.gateway.settle()
        self._stop_driver()
        self.gateway.stop()
        self.gateway.join(5)

    def _stop_driver(self) -> None:
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None


class Launchers:
    """The daemon's launcher: the template launcher, plus the Ray launcher when one is configured; each session
    goes to the one its spec names (``placement.on``). Ray sessions have negative handles."""

    def __init__(self, local: TemplateLauncher, ray: RayLauncher | None = None) -> None:
        self.local, self.ray = local, ray

    @property
    def template_pid(self) -> int | None:
        return self.local.template_pid

    @property
    def clone_filter(self) -> str | None:
        return self.local.clone_filter

    def template_children(self) -> tuple[int | None, frozenset[int], float]:
        return self.local.template_children()

    def start(self) -> None:
        self.local.start()
        if self.ray is not None:
            self.ray.start()

    def fileno(self) -> int | None:
        return self.local.fileno()

    def is_remote(self, pid: int) -> bool:
        """Whether ``pid`` is a remote launcher's handle (not a local process: not for the local monitor)."""
        return pid < 0

    def kind_of(self, pid: int) -> str:
        return "ray" if pid < 0 else "template"

    def ray_health(self) -> dict[str, Any] | None:
        """The Ray launcher's state (``daemon.status`` ``ray``), or None without one."""
        return self.ray.health() if self.ray is not None else None

    def adopt_remote(self, sid: str) -> tuple[int | None, str | None]:
        """A session with no local runner: adopt its Ray actor if there is one (see :meth:`RayLauncher.adopt`);
        ``(None, None)`` when this daemon has no Ray launcher."""
        return self.ray.adopt(sid) if self.ray is not None else (None, None)

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        if (spec.get("placement") or {}).get("on") == "ray":
            if self.ray is None:
                raise LaunchError(NO_RAY)
            return self.ray.launch(spec)
        return self.local.launch(spec)

    def inspect_start(self, workflow: str, params: dict[str, Any], path: list[str] | None = None,
                      confine: dict[str, Any] | None = None) -> int:
        return self.local.inspect_start(workflow, params, path, confine)

    def drain_inspected(self) -> list[tuple[int, dict[str, Any]]]:
        return self.local.drain_inspected()

    def drain_exits(self) -> list[ExitInfo]:
        exits = self.local.drain_exits()
        return exits + self.ray.drain_exits() if self.ray is not None else exits

    def drain_notes(self) -> list[tuple[Any, ...]]:
        return self.ray.drain_notes() if self.ray is not None else []

    def signal(self, pid: int, sig: int) -> bool:
        if pid < 0:
            return self.ray.signal(pid, sig) if self.ray is not None else False
        return self.local.signal(pid, sig)

    def shutdown(self) -> None:
        self.local.shutdown()
        if self.ray is not None:
            self.ray.shutdown()
