"""The Ray launcher: each session in its own Ray actor on some node of a cluster (``[launcher] kind = "ray"``).

Behind the launcher seam (:class:`labd.daemon.launcher.Launcher`), with what a remote launcher adds to it:

- **handles, not pids**: the supervisor keys runners by the int :meth:`launch` returns; a Ray session's is a
  negative *handle* (never a local pid), which tells the supervisor not to watch it in the local process table
  (:mod:`labd.daemon.launch_routing`). Where it runs is reported as a ``session.placed`` event (node, ip, pid there,
  work dir).
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

:class:`labd.daemon.launch_routing.Launchers` routes between the template launcher and this one per session
(``labd run --on ray|local``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from labd.daemon import ray_adopt
from labd.daemon.launch_routing import NO_RAY
from labd.daemon.launcher import ExitInfo, LaunchError
from labd.daemon.ray_adopt import Adoption
from labd.daemon.ray_cleanup import NodeCleanups
from labd.daemon.ray_endpoint import home_host, is_loopback
from labd.daemon.ray_link import DriverLink
from labd.daemon.ray_placement import PlacementError, placement_from, ray_options
from labd.daemon.runner_gateway import RunnerGateway
from labd.ipc.units import shortened

__all__ = ["RayLauncher", "placement_from", "PlacementError", "NO_RAY"]


CONNECT_TIMEOUT_S = 60.0  # a driver that has not connected to the cluster by then is ended (tried again later)
SHIP_MAX_BYTES = 1 << 30  # at most this much of a work directory is shipped back (files beyond are named)
#: how long a remote runner whose workflow ended waits for the daemon to acknowledge its last events (its spool is
#: on the node, out of the daemon's reach: it waits for a daemon that is being restarted rather than exit)
REMOTE_FLUSH_TIMEOUT_S = 24 * 3600.0
FORGET_AFTER = 10  # a request unanswered this many spawn timeouts after its session ended is forgotten
SWEEP_S = 300.0  # how often the driver kills actors of this home that no running session owns
DRIVER_ENDED = "the daemon's Ray driver process ended; a new driver adopted the actor"
NEVER_PLACED = "Ray had not placed the session's actor on a node"


class RayLauncher:
    """Sessions as Ray actors; the Ray client runs in a driver child process (:mod:`labd.daemon.ray_link`), spoken
    to without waiting: a launch or an adoption is a request whose answer comes later, through :meth:`drain_exits`
    (a spawn the cluster refused ends the session ``failed``; an actor that is gone makes it ``lost``) and
    :meth:`drain_notes` (``session.placed``, ``session.adopted``). While the cluster does not answer, sessions to
    adopt wait for it (a start is tried once per backoff) and ``--on ray`` starts fail at once, saying why."""

    def __init__(self, home: Path, runners_local: str, max_message: int, settings: dict[str, Any],
                 env: dict[str, str] | None = None, timeout: float | None = None, session_nofile: int = 0) -> None:
        self.address = str(settings.get("address") or "auto")
        self.listen = str(settings.get("runner_listen") or "tcp://0.0.0.0:0")
        self.advertise = settings.get("advertise")
        self.node_dir = settings.get("node_dir")
        self.ship_max = int(settings.get("ship_max_bytes") or SHIP_MAX_BYTES)
        self.session_nofile = session_nofile  # [daemon] session_nofile, set by each runner on its node (0: as is)
        # how long a driver may take to connect, and to answer a spawn; LABD_RAY_CONNECT_TIMEOUT_S: a test's shorter
        self._timeout = timeout if timeout is not None else shortened(CONNECT_TIMEOUT_S, "LABD_RAY_CONNECT_TIMEOUT_S",
                                                                      floor=1.0)
        self.home = home
        self._any_port = self.listen.rpartition(":")[2] in ("0", "*")
        self._remembered = ray_adopt.remembered_ports(home) if self._any_port else []
        self.gateway = RunnerGateway(home, self.listen, runners_local, max_message, prefer_ports=self._remembered,
                                     adopting=True)
        self.namespace = ray_adopt.namespace(self.gateway.public)
        self.log = structlog.get_logger("labd.ray")
        self.link = DriverLink(self.address, self.namespace, dict(os.environ if env is None else env),
                               self._timeout, self.log)
        self.cleanups = NodeCleanups(self.log)  # deleted sessions' node directories, until a driver takes them
        self._swept = 0.0
        self._sid: dict[int, str] = {}  # every session this launcher answers for, by handle
        self._watched: set[int] = set()  # those the connected driver watches
        self._placed: set[int] = set()  # those whose actor Ray placed (their runner started on a node)
        self._requests: dict[int, tuple[str, int, float]] = {}  # req -> (op, handle, when sent): not answered yet
        self._adopt: dict[int, Adoption] = {}  # handles to adopt once a driver is connected
        self._kills: dict[int, int] = {}  # handle -> SIGTERM / SIGKILL asked before a driver watched its actor
        self._exits: list[ExitInfo] = []
        self._notes: list[tuple[Any, ...]] = []
        self._next = 0
        self._req = 0
        self.endpoint = ""

    def start(self) -> None:
        """Listen for runners and spawn the driver. The daemon does not wait for the cluster: only Ray missing
        (:class:`LaunchError`) stops it from starting."""
        self.gateway.start()
        self.gateway.ready.wait(10)
        if self.gateway.error is not None:
            raise LaunchError(f"cannot listen for remote runners on {self.listen}: {self.gateway.error}")
        host, _, port = self.gateway.endpoint[len("tcp://"):].rpartition(":")
        if self.advertise:
            host = str(self.advertise)
        elif host in ("0.0.0.0", "*", ""):
            host = home_host(self.address)
            if is_loopback(host):
                self.log.warning("remote runners are told to call this host at a loopback address: runners on other "
                                 "hosts cannot; set [launcher] advertise", host=host, address=self.address)
        self.endpoint = f"tcp://{host}:{port}"
        if self._any_port:  # the next daemon binds them again: the runners running now dial these ports
            # the port bound first; a remembered one that was taken stays remembered (its runners dial it: the
            # gateway binds it too once it is free, and so will the next daemon)
            ray_adopt.remember_ports(self.home, [int(port), *self._remembered])
        self.link.start()
        self.link.wait_loaded()
        self.log.info("Ray launcher started; its driver connects to the cluster", address=self.address,
                      runner_endpoint=self.endpoint)

    def health(self) -> dict[str, Any]:
        """The launcher's state for ``daemon.status``: its address, its driver's state, the sessions waiting for a
        driver to adopt them, and while the cluster does not answer since when, why, and when the next start is
        tried."""
        return {"address": self.address, "endpoint": self.endpoint, "waiting_ports": list(self.gateway.waiting_ports),
                "adopting": len(self._adopt), **self.link.health()}

    def _request(self, op: str, handle: int, **fields: Any) -> int:
        self._req += 1
        self.link.send({"op": op, "req": self._req, "handle": handle, **fields})
        self._requests[self._req] = (op, handle, time.monotonic())
        return self._req

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        """Ask the driver for the session's actor and return its handle at once (the answer comes later)."""
        self._pump()  # a driver that died unnoticed is replaced first
        if self.link.state == "none":
            if not self.link.may_start():
                raise LaunchError(self.link.refusal())
            self.link.start()
        sid = spec["session_id"]
        self._next -= 1
        handle = self._next
        remote = {**spec, "endpoint": self.endpoint, "curve": self.gateway.authorize(sid), "ship_files": self.ship_max,
                  "ship_ranges": True,
                  "record_interval": spec.get("record_interval") or 2.0,
                  "flush_timeout": spec.get("flush_timeout") or REMOTE_FLUSH_TIMEOUT_S,
                  "session_nofile": self.session_nofile}
        if self.node_dir:
            remote["node_dir"] = self.node_dir
        if spec.get("durable") or spec.get("replay_seed"):  # a resume, branch or replay: its seeds and checkpoint
            remote["carry_from"] = str(self.home / "sessions" / sid)  # objects go to the node (runner/carry.py)
        try:
            # give_up_after: a spawn still queued in the driver past the time this daemon waits is not made
            self._request("spawn", handle, sid=sid, spec=remote, options=ray_options(spec), give_up_after=self._timeout)
        except LaunchError:
            self.gateway.revoke(sid)
            raise
        self._sid[handle] = sid
        return handle, time.time()

    def adopt(self, sid: str, unrecorded: bool = False) -> int:
        """Take back session ``sid``'s actor, left running by a previous daemon: its handle at once; the
        driver answers later (``session.adopted``, or an exit: ``absent`` when no actor of it exists, with why the
        session is lost). An actor still waiting for a node is adopted as it waits (the session stays ``starting``;
        ``session.placed`` comes when Ray places it). ``unrecorded``: the last daemon died before recording its
        launch."""
        self._next -= 1
        handle = self._next
        self.gateway.readmit(sid)  # its runner reconnects with the key derived for it
        self._sid[handle] = sid
        self._adopt[handle] = Adoption(unrecorded=unrecorded)
        self._pump_adoptions()
        return handle

    def _pump_adoptions(self) -> None:
        """Send the adoptions not sent yet, starting a driver for them if none runs (once per backoff)."""
        if not self._adopt:
            return
        if self.link.may_start():
            self.link.start()
        if self.link.state == "none":
            return
        for handle, a in self._adopt.items():
            if a.req is None:
                try:
                    a.req = self._request("adopt", handle, sid=self._sid[handle])
                except LaunchError:
                    return  # the driver died at once: _pump notices it gone

    def _pump(self) -> None:
        """Read what the driver said and act on it; start a driver for sessions waiting to be adopted."""
        for msg in self.link.poll():
            op = msg.get("op")
            if op == "_failed":
                self._driver_failed(str(msg.get("error")))
            elif op == "_gone":
                self._driver_gone()
            elif op in ("spawned", "adopted"):
                self._answered(msg)
            elif op == "cleaned":  # a deleted session's directory on its node (the session is gone from the store)
                self.cleanups.report(msg)
            elif op == "_ready":  # requests held while it connected are sent now: their time to answer starts now
                now = time.monotonic()
                self._requests = {req: (op_, handle, now) for req, (op_, handle, _) in self._requests.items()}
            else:
                self._on_report(msg)
        now = time.monotonic()
        for req, (op, handle, sent) in list(self._requests.items()):
            if op == "spawn" and now - sent > self._timeout and handle in self._sid:  # a driver that hangs
                self._end(handle, ExitInfo(handle, None, None, failed=f"the Ray driver did not answer the spawn "
                                                                      f"request within {self._timeout:.0f} s"))
            elif handle not in self._sid and now - sent > FORGET_AFTER * self._timeout:
                # kept so that a late success still kills its actor; past this, the sweep does (for a driver
                # that hangs for good, the table grew by every start)
                del self._requests[req]
        self._pump_adoptions()
        self.cleanups.send(self.link)
        if self.link.state == "ready" and now - self._swept > SWEEP_S:
            # first once connected (after every session was adopted), then now and then: actors left by sessions
            # that ended (or were deleted, or were killed while the cluster did not answer) are killed
            self._swept = now
            try:
                self.link.send({"op": "sweep"})
            except LaunchError:
                pass

    def _answered(self, msg: dict[str, Any]) -> None:
        op, handle, _ = self._requests.pop(int(msg.get("req") or 0), ("", 0, 0.0))
        if not op:
            return
        sid, error = self._sid.get(handle), msg.get("error")
        if sid is None:  # ended meanwhile (killed, or the answer came too late): its actor must not run on
            if not error:
                self._send_signal(handle, signal.SIGKILL)
            return
        if op == "spawn":
            if error:
                self._end(handle, ExitInfo(handle, None, None, failed=str(error)[:500]))
                return
        else:
            a = self._adopt.pop(handle, Adoption())
            if error:
                if a.spawned and msg.get("absent"):
                    self._end(handle, ExitInfo(handle, None, None,
                                               failed="the Ray driver ended before it created the session's actor"))
                elif a.unplaced and msg.get("absent"):
                    self._end(handle, ExitInfo(handle, None, None, failed=(
                        NEVER_PLACED + ", and the cluster no longer has it (stopped or restarted)")))
                else:
                    self._end(handle, ExitInfo(handle, None, None, str(error)[:500], absent=bool(msg.get("absent"))))
                return
            if a.unrecorded:  # the previous daemon died between creating the actor and recording it
                self._notes.append(("event", sid, "session.launched", {"pid": 0, "create_time": 0.0, "launcher": "ray",
                                                                        "recovered": True, "run_key": True}))
            waiting = msg.get("waiting")
            if waiting not in ray_adopt.WAITING:  # placed (or its state unknown: as the driver, taken as placed)
                self._placed.add(handle)
            self._notes.append(("event", sid, "session.adopted", {
                "pid": 0, **({"reason": a.why} if a.why else {}), **({"waiting": waiting} if waiting else {})}))
            self.log.info("Ray session adopted", session_id=sid, actor=ray_adopt.actor_name(sid),
                          **({"waiting": waiting} if waiting else {}))
        self._watched.add(handle)
        if handle in self._kills:  # a stop asked before the driver watched it
            self._send_signal(handle, self._kills.pop(handle))

    def _end(self, handle: int, info: ExitInfo) -> None:
        sid = self._sid.pop(handle, None)
        if sid is None:
            return
        self.gateway.revoke(sid)
        self.gateway.heard.discard(sid)
        self._watched.discard(handle)
        self._placed.discard(handle)
        self._adopt.pop(handle, None)
        self._kills.pop(handle, None)
        self._exits.append(info)

    def _on_report(self, msg: dict[str, Any]) -> None:
        op, raw = msg.get("op"), msg.get("handle")
        handle = raw if isinstance(raw, int) else 0
        sid = self._sid.get(handle)
        if sid is None:
            return
        if op == "exited":
            crash = msg.get("crash")  # [text, cut] read on the node: checked, and bounded again by the supervisor
            tail = (crash[0], bool(crash[1])) if isinstance(crash, list) and len(crash) == 2 and isinstance(
                crash[0], str) else None
            self._end(handle, ExitInfo(handle, msg.get("exit_code"), msg.get("signal"), msg.get("reason"), tail))
        elif op == "placed":
            keys = ("node", "ip", "pid", "workdir", "hostname", "actor_pid")
            info = {k: msg[k] for k in keys if msg.get(k) is not None}
            self._notes.append(("event", sid, "session.placed", {"actor": ray_adopt.actor_name(sid), **info}))
            self._placed.add(handle)
        elif op == "note":
            note = msg["note"]
            if note[0] == "limit":
                self._notes.append(("limit", sid, note[1]))
            elif note[0] == "event":
                self._notes.append(("event", sid, note[1], note[2]))

    def _driver_failed(self, error: str) -> None:
        """A driver start failed: spawns held for it fail, and so do the sessions whose actor Ray had not placed
        when the last driver ended (the cluster went away under them: a ``labd run --wait`` waited for it for good);
        the other adoptions wait for the next start; a kill asked meanwhile ends its session now (its actor, if it
        runs, is swept once a driver connects)."""
        for op, handle, _ in list(self._requests.values()):
            if op == "spawn":
                self._end(handle, ExitInfo(handle, None, None,
                                           failed=f"the Ray cluster at {self.address} does not answer: {error}"))
        self._requests.clear()
        for handle, a in list(self._adopt.items()):
            if (a.spawned or a.unplaced) and self._sid.get(handle) not in self.gateway.heard:
                # not placed as far as this daemon knows, and its runner never called: a runner that did is alive
                # (placed meanwhile), and waits for the cluster as a placed one does
                self._end(handle, ExitInfo(handle, None, None, failed=(
                    f"{NEVER_PLACED} when the Ray cluster at {self.address} stopped answering ({error})")[:500]))
        for a in self._adopt.values():
            a.req = None
        for handle, sig in list(self._kills.items()):
            if sig == signal.SIGKILL:
                self._killed_unreached(handle)

    def _driver_gone(self) -> None:
        """The driver died. Its actors are detached and run on: a new driver adopts them again (waiting while the
        cluster does not answer); only a session whose actor is gone is lost, with the reason."""
        moved = sorted(self._watched) + [h for op, h, _ in self._requests.values() if op == "spawn"]
        for handle in self._watched:
            self._adopt[handle] = Adoption(why=DRIVER_ENDED, unplaced=handle not in self._placed)
        for op, handle, _ in self._requests.values():
            if op == "spawn" and handle in self._sid:
                self._adopt[handle] = Adoption(why=DRIVER_ENDED, spawned=True)
        for a in self._adopt.values():
            a.req = None
        self._watched.clear()
        self._requests.clear()
        if moved:
            self.log.warning("the Ray driver process ended: starting a new one to adopt its sessions",
                             sessions=sorted(self._sid[h] for h in moved if h in self._sid))

    def _killed_unreached(self, handle: int) -> None:
        self.log.warning("a Ray session was killed while no driver reached the cluster: its actor, if it still "
                         "runs, is killed once one does", session_id=self._sid.get(handle))
        self._end(handle, ExitInfo(handle, None, int(signal.SIGKILL)))

    def drain_exits(self) -> list[ExitInfo]:
        if not self.gateway.keys.settled.is_set() and self._any_port and not self._sid:
            # nothing adopted: no runner dials an older port; keep only this one (they piled up to 4, and one taken
            # was tried for good: it could take another home's port while that daemon restarted)
            self.gateway.forget_waiting()
            ray_adopt.remember_ports(self.home, [int(self.endpoint.rpartition(":")[2])])
        self.gateway.settle()  # called first from the main loop, after every adoption: unknown keys refused now
        self._pump()
        exits, self._exits = self._exits, []
        return exits

    def drain_notes(self) -> list[tuple[Any, ...]]:
        self._pump()
        notes, self._notes = self._notes, []
        return notes

    def clean_nodes(self, placed: list[tuple[str, str, str]]) -> None:
        """Remove deleted sessions' directories on the nodes they ran on (``(session, node id, work dir)``): the
        driver runs a task pinned to each node (:func:`labd.runner.node_cleanup.remove_session_dir`) and reports
        what became of it; they wait until a driver is connected (:mod:`labd.daemon.ray_cleanup`)."""
        self.cleanups.add(placed)
        self.cleanups.send(self.link)

    def _send_signal(self, handle: int, sig: int) -> bool:
        try:
            self.link.send({"op": "signal", "handle": handle, "sig": int(sig)})
        except LaunchError:
            return False
        return True

    def signal(self, pid: int, sig: int) -> bool:
        """Signal a session's runner on its node. A SIGTERM or SIGKILL for an actor no driver watches yet (being
        spawned or adopted) is sent once one does; a SIGKILL while no driver reaches the cluster ends the session
        at once."""
        if pid not in self._sid:
            return False
        if pid in self._watched and self.link.state == "ready":
            return self._send_signal(pid, sig)
        if sig not in (signal.SIGTERM, signal.SIGKILL):
            return False
        if sig == signal.SIGKILL or pid not in self._kills:
            self._kills[pid] = int(sig)
        if sig == signal.SIGKILL and self.link.state == "none":
            self._killed_unreached(pid)
        return True

    def shutdown(self) -> None:
        self.cleanups.abandon()
        self.gateway.settle()
        self.link.kill()
        self.gateway.stop()
        self.gateway.join(5)
