"""``python -m labd.daemon.ray_driver ADDRESS NAMESPACE``: the Ray launcher's driver process (JSON lines on
stdin/stdout).

Ray is a heavy client (a core worker with its own threads, gRPC, signal handlers): it runs in this child of the
daemon, never inside the daemon, exactly as the template launcher keeps forking out of the daemon. The daemon
side is :class:`labd.daemon.ray_launcher.RayLauncher`. Requests (one JSON object per line on stdin):

- ``{"op": "spawn", "req", "handle", "sid", "spec", "options"}``: create the session's actor
  (:class:`labd.daemon.ray_pending.SelfStartingActor`, ``options`` = its Ray resource request; *detached*, named
  ``labd-<session>`` in ``NAMESPACE``, so it outlives this driver), which starts the runner once Ray places it.
  Answered with ``{"op": "spawned", "req"}`` once the actor is created (or ``"error"`` when no node of the cluster
  could ever satisfy the request), by one of :data:`SPAWNERS` threads: a resume's seed and checkpoint objects are
  read from the home and sent with the actor (:func:`labd.runner.carry.carried`) meanwhile, off the loop; a signal
  for it that comes first is held until it exists. Spawns of one session are made one after the other (a retry kills
  the actor its earlier spawn made), and one still queued ``give_up_after`` seconds after it came (the daemon's own
  deadline, after which it ended the session) is not made. Placement happens afterwards and is reported as
  ``{"op": "placed", "handle", ...}``.
- ``{"op": "adopt", "req", "handle", "sid"}``: find the actor a previous driver created for the session and
  watch it from now on: ``{"op": "adopted", "req"}`` with ``"error"`` (why it is lost) when it is not there, is
  dead, or never started its runner. An actor Ray has not placed yet (:data:`labd.daemon.ray_adopt.WAITING`)
  is adopted at once, with ``"waiting": STATE``, and waited for without a deadline (reported ``placed`` when
  Ray places it, ``exited`` if it dies first); so is a placed one that has not answered within
  :data:`ADOPT_TIMEOUT_S`. Only an actor that is gone makes the session lost.
- ``{"op": "sweep"}``: kill every labd actor of ``NAMESPACE`` this driver does not watch (left by a session that
  ended, or was deleted, when no daemon could end its actor).
- ``{"op": "signal", "handle", "sig"}``: signal the runner's group on its node. A SIGKILL also kills the actor
  (``ray.kill``) if the runner has not ended :data:`KILL_ACTOR_AFTER_S` later. A SIGTERM or SIGKILL for an actor
  not placed yet (no runner to signal) kills the actor at once: it is taken out of Ray's queue, and ``exited``.

Reports: ``{"op": "note", "handle", "note"}`` (the node monitor's limit breaches and samples) and
``{"op": "exited", "handle", "exit_code", "signal", "reason", "crash"}`` (``crash``: the end of the runner's crash
file, ``[text, cut]``, when it exited on a signal or a non-zero code) -- ``reason`` set when the actor or its node was
lost (Ray's own account of why); the actor of a session that ended is killed. End of stdin: the driver exits;
the detached actors keep running their sessions (or waiting to be placed) for the next daemon to adopt.

The loop never waits on one actor: every call is in flight at once (``ray.wait`` over all of them, 50 ms at a
time), so an actor waiting for a node, or slow to answer at adoption, holds up no other session's poll; actors are
created on spawner threads. (Adoptions and sweeps still make their short calls to Ray's control store on the loop.)
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from typing import Any

from labd.daemon.ray_adopt import WAITING, actor_name
from labd.daemon.ray_pending import actor_state
from labd.ipc.units import shortened
from labd.runner.carry import carried

__all__ = ["main"]

POLL_S = 0.5  # the actor's long poll: notes reach the daemon at least this often
KILL_ACTOR_AFTER_S = 3.0
#: threads creating actors (:func:`_spawner`): a resume reading a large record holds up one of them
SPAWNERS = 2
SPAWNED = "spawned-by-thread"  # the loop's own message from a spawner thread (never sent by the daemon)
MAX_CLEANING = 100  # removals of deleted sessions' node directories in flight at once (the others wait their turn)
#: how long an adoption waits for a placed actor's describe() before the actor is adopted anyway (answering the
#: daemon, which waits); it is then waited for as one not placed yet
ADOPT_TIMEOUT_S = 30.0


def adopt_timeout() -> float:
    """:data:`ADOPT_TIMEOUT_S`, or the tests' shorter ``LABD_RAY_ADOPT_TIMEOUT_S`` (a test that waits past the deadline
    need not wait 30 s)."""
    return shortened(ADOPT_TIMEOUT_S, "LABD_RAY_ADOPT_TIMEOUT_S", floor=1.0)


def _out(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _reason(exc: BaseException) -> str:
    """Ray's account of an actor's death: its first meaningful line, and the line saying why when Ray gives one ("The
    actor is dead because it was killed by `ray.kill`", "... because its node has died"), with the node's address.
    The first line alone ("The actor died unexpectedly before finishing this task.") was the same for every cause."""
    lines = [re.sub(r"^ray\.exceptions\.\w+:\s*", "", ln.strip()) for ln in str(exc).strip().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Traceback")]
    if not lines:
        return f"Ray actor lost: {type(exc).__name__}"
    said = [lines[0]]
    why = next((ln for ln in lines[1:] if "because" in ln), None)
    if why is not None:
        said.append(why)
    where = next((ln for ln in lines[1:] if ln.lower().startswith("ip:")), None)
    if where is not None:
        said.append(f"(node {where})")
    return f"Ray actor lost: {' '.join(said)}"[:500]


def _feasible(ray: Any, options: dict[str, Any]) -> str | None:
    """None if some node of the cluster has (in total) every resource asked for; else why not."""
    want = dict(options.get("resources") or {})
    for name, key in (("CPU", "num_cpus"), ("GPU", "num_gpus"), ("memory", "memory")):
        if options.get(key):
            want[name] = options[key]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for n in nodes:
        have = n.get("Resources") or {}
        if all(have.get(k, 0) >= v for k, v in want.items()):
            return None
    return f"no node of the Ray cluster has {want} (alive nodes: {len(nodes)})"


def _find(ray: Any, name: str, namespace: str) -> tuple[Any, str | None]:
    """The actor named ``name`` (placed or not), or (None, why the session is lost)."""
    try:
        return ray.get_actor(name, namespace=namespace), None
    except ValueError:
        # not "while no daemon ran": an actor the cluster lost before placing it (stopped, restarted) is not there
        # either, nor one killed while this home's driver was down but its daemon ran
        return None, (f"Ray actor {name} not found (killed, its node died, or the cluster was stopped or "
                      f"restarted, since a driver of this home last watched it; namespace {namespace})")


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _free_name(ray: Any, name: str, namespace: str) -> None:
    """Before a spawn: an actor of that name that nobody watches (a resumed session's, whose kill is still under
    way, or one a previous daemon left) is killed, and its name released (up to 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            old = ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        _kill(ray, old)
        time.sleep(0.1)


def _sweep(ray: Any, namespace: str, watched: set[str]) -> None:
    """Kill the labd actors of ``namespace`` whose names are not in ``watched``."""
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception:  # noqa: BLE001 - the next sweep tries again
        return
    for entry in named:
        name = entry.get("name") if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and entry.get("namespace") != namespace:
            continue
        if isinstance(name, str) and name.startswith("labd-") and name not in watched:
            try:
                _kill(ray, ray.get_actor(name, namespace=namespace))
            except ValueError:
                pass


def _spawner(ray: Any, actor_class: Any, namespace: str, spawns: queue.Queue[dict[str, Any]],
             inbox: queue.Queue[dict[str, Any] | None]) -> None:
    """Create the actors of ``spawns`` one at a time, answering each on the loop's ``inbox`` (``SPAWNED``, with the
    actor or an error). Off the loop: the name's previous holder may take seconds to go (:func:`_free_name`), and a
    resume's seed and objects are read from the home and sent with the actor (:func:`carried`): meanwhile the other
    sessions' polls, signals and adoptions go on."""
    while True:
        msg = spawns.get()
        answer: dict[str, Any] = {"op": SPAWNED, "req": msg["req"], "handle": int(msg.get("handle") or 0)}
        give_up = msg.get("give_up_after")
        if isinstance(give_up, (int, float)) and time.monotonic() - float(msg.get("received") or 0) > give_up:
            # it waited behind other spawns until the daemon stopped waiting for it (and ended the session)
            answer.update(actor=None, error=f"not created: it waited {give_up:.0f} s behind other spawns")
        else:
            answer.update(_create(ray, actor_class, namespace, msg))
        del msg  # a resume's objects are not kept while this thread waits for the next spawn
        inbox.put(answer)


def _create(ray: Any, actor_class: Any, namespace: str, msg: dict[str, Any]) -> dict[str, Any]:
    """``{"actor": the session's new actor}``, or ``{"error": why not}`` (never raises: a spawner thread goes on)."""
    try:
        why = _feasible(ray, msg["options"])
        if why is not None:
            return {"actor": None, "error": why}
        name = actor_name(msg["sid"])
        _free_name(ray, name, namespace)
        spec = carried(msg["spec"])
        return {"actor": actor_class.options(name=name, namespace=namespace, lifetime="detached",
                                             **msg["options"]).remote(msg["sid"], spec)}
    except Exception as exc:  # noqa: BLE001 - e.g. the name still taken, the cluster gone: the launch fails
        return {"actor": None, "error": f"cannot create the actor: {exc}"[:1000]}


def _clean(ray: Any, cleaner: Any, msg: dict[str, Any]) -> Any:
    """Start removing a deleted session's directory on its node (a task pinned there, ``soft=False``: never on another
    node); the task's ref. Raises what Ray raises for a submission it refuses."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pinned = NodeAffinitySchedulingStrategy(node_id=str(msg["node"]), soft=False)
    return cleaner.options(scheduling_strategy=pinned).remote(str(msg["workdir"]), str(msg["sid"]))


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "auto"
    namespace = sys.argv[2] if len(sys.argv) > 2 else "labd"
    try:
        import ray
    except ImportError:
        _out({"op": "error", "fatal": True,
              "message": "[launcher] names a Ray cluster, but Ray is not installed: "
                         "pip install 'labd[ray]' (or remove [launcher] address/kind from config.toml)"})
        return
    _out({"op": "loaded"})  # the daemon starts once Ray imports; connecting to the cluster may take a minute
    try:
        from labd.daemon.ray_pending import SelfStartingActor

        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
        Actor = ray.remote(max_concurrency=4)(SelfStartingActor)  # type: ignore[call-overload]  # wait() blocks one thread; signal() needs another
        from labd.runner.node_cleanup import remove_session_dir

        cleaner = ray.remote(num_cpus=0, max_retries=0)(remove_session_dir)
    except Exception as exc:  # noqa: BLE001 - reported to the daemon, which tries again after a backoff
        _out({"op": "error", "message": f"cannot connect to Ray at {address!r}: {exc}"[:1000]})
        return
    _out({"op": "ready", "ray": ray.__version__, "nodes": len([n for n in ray.nodes() if n.get("Alive")])})

    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            try:
                inbox.put(json.loads(line))
            except ValueError:
                continue
        inbox.put(None)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    adopt_s = adopt_timeout()
    actors: dict[int, Any] = {}
    names: dict[int, str] = {}  # handle -> actor name
    refs: dict[Any, tuple[int, str]] = {}  # in-flight call -> (handle, "start" | "adopt" | "wait")
    kill_at: dict[int, float] = {}
    placed: set[int] = set()  # handles whose actor Ray has placed (its runner started)
    adopting: dict[int, tuple[Any, float]] = {}  # handle -> (req, deadline): adoptions not answered yet

    def forget(handle: int) -> Any:
        actor = actors.pop(handle, None)
        names.pop(handle, None)
        kill_at.pop(handle, None)
        placed.discard(handle)
        adopting.pop(handle, None)
        for ref, (h, _) in list(refs.items()):
            if h == handle:
                del refs[ref]
        return actor

    def ended(handle: int, **fields: Any) -> None:
        actor = forget(handle)
        _out({"op": "exited", "handle": handle, "exit_code": fields.get("exit_code"),
              "signal": fields.get("signal"), "reason": fields.get("reason"), "crash": fields.get("crash")})
        if actor is not None:  # detached: it would outlive the session
            _kill(ray, actor)

    def adopted(handle: int, error: str | None = None, **fields: Any) -> None:
        """Answer the adoption of ``handle`` (an actor that will not be watched when ``error``)."""
        req, _ = adopting.pop(handle)
        if error is not None:
            forget(handle)
        _out({"op": "adopted", "req": req, **({"error": error} if error is not None else fields)})

    def signalled(handle: int, sig: int) -> None:
        if handle not in placed and sig in (signal.SIGTERM, signal.SIGKILL):
            ended(handle, signal=sig)  # no runner yet: the actor is taken out of Ray's queue
            return
        actors[handle].signal.remote(sig)
        if sig == signal.SIGKILL:
            kill_at.setdefault(handle, time.monotonic() + KILL_ACTOR_AFTER_S)

    cleaning: dict[Any, dict[str, Any]] = {}  # task ref -> its "clean" request: deleted sessions' node directories
    to_clean: collections.deque[dict[str, Any]] = collections.deque()  # "clean" requests not started yet
    spawning: dict[int, tuple[str, list[int]]] = {}  # handle -> (actor name, signals held until it is created)
    later: dict[str, list[dict[str, Any]]] = {}  # actor name -> spawns of it waiting for the one being made
    spawns: queue.Queue[dict[str, Any]] = queue.Queue()
    for i in range(SPAWNERS):
        threading.Thread(target=_spawner, args=(ray, Actor, namespace, spawns, inbox), name=f"spawn-{i}",
                         daemon=True).start()
    while True:
        while True:
            try:
                msg = inbox.get_nowait() if refs else inbox.get(timeout=0.1)
            except queue.Empty:
                break
            if msg is None:
                return  # the daemon closed our stdin: exit (the detached actors run on, for the next daemon)
            op, handle = msg.get("op"), int(msg.get("handle") or 0)
            if op == "spawn":
                name = actor_name(msg["sid"])
                msg["received"] = time.monotonic()
                if any(n == name for n, _ in spawning.values()):  # one at a time per name: the later one frees it
                    later.setdefault(name, []).append(msg)
                else:
                    spawns.put(msg)  # created on a spawner thread: a resume's objects are read and sent meanwhile
                spawning[handle] = (name, [])
            elif op == SPAWNED and handle in spawning and "actor" in msg:  # a spawner thread's answer
                name, held = spawning.pop(handle)
                if later.get(name):  # the next spawn of that name (a retry): its turn now
                    spawns.put(later[name].pop(0))
                else:
                    later.pop(name, None)
                if msg.get("error") is not None:
                    _out({"op": "spawned", "req": msg["req"], "error": msg["error"]})
                    continue
                actor = msg["actor"]
                actors[handle], names[handle] = actor, name
                refs[actor.where.remote()] = (handle, "start")  # answered once Ray has placed it
                _out({"op": "spawned", "req": msg["req"]})
                for sig in held:  # signals that came while it was being created, in their order
                    signalled(handle, sig)
            elif op == "adopt":
                name = actor_name(msg["sid"])
                actor, why = _find(ray, name, namespace)
                if actor is None:
                    _out({"op": "adopted", "req": msg["req"], "error": why, "absent": True})
                    continue
                actors[handle], names[handle] = actor, name
                refs[actor.describe.remote()] = (handle, "adopt")  # answered once it is placed, raises if it dies
                adopting[handle] = (msg["req"], time.monotonic() + adopt_s)
                state = actor_state(ray, actor)
                if state in WAITING:  # Ray places it when a node has room: watched meanwhile, with no deadline
                    adopted(handle, waiting=state)
            elif op == "sweep":  # the actors being created are watched already
                _sweep(ray, namespace, set(names.values()) | {name for name, _ in spawning.values()})
            elif op == "clean":  # a deleted session's directory on a node: answered "cleaned" when the task ends
                to_clean.append(msg)  # started below, MAX_CLEANING at a time (a prune deletes 10,000 at once)
            elif op == "signal" and handle in spawning:
                spawning[handle][1].append(int(msg["sig"]))
            elif op == "signal" and handle in actors:
                signalled(handle, int(msg["sig"]))
        while to_clean and len(cleaning) < MAX_CLEANING:
            msg = to_clean.popleft()
            try:
                ref = _clean(ray, cleaner, msg)
            except Exception as exc:  # noqa: BLE001 - the directory stays; the daemon logs why
                _out({"op": "cleaned", "sid": msg.get("sid"), "node": msg.get("node"), "workdir": msg.get("workdir"),
                      "outcome": f"not removed: {exc}"[:500]})
                continue
            cleaning[ref], refs[ref] = msg, (0, "clean")
        if not refs:
            continue
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.05)
        for ref in ready:
            handle, what = refs.pop(ref)
            if what == "clean":
                done = cleaning.pop(ref)
                try:
                    outcome = str(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - refused on the node, or the node is gone: it stays
                    outcome = f"not removed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
                _out({"op": "cleaned", "sid": done.get("sid"), "node": done.get("node"),
                      "workdir": done.get("workdir"), "outcome": outcome[:500]})
                continue
            if handle not in actors:
                continue
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the actor (or its node) died: the session is lost
                if handle in adopting:
                    adopted(handle, _reason(exc))
                else:
                    ended(handle, reason=_reason(exc))
                continue
            if what == "adopt" and not result.get("started"):
                # an actor of an earlier labd, whose driver was to start the runner by a call and stopped first
                why = (f"Ray actor {names[handle]} was found but never started its runner (the previous daemon "
                       f"stopped first)")
                if handle in adopting:
                    _kill(ray, actors[handle])
                    adopted(handle, why)
                else:
                    ended(handle, reason=why)
                continue
            if what == "wait":
                for note in result["notes"]:
                    _out({"op": "note", "handle": handle, "note": list(note)})
                if result["exited"]:
                    ended(handle, exit_code=result["exit_code"], signal=result["signal"], crash=result.get("crash"))
                    continue
            else:  # placed, its runner started
                if handle in adopting:  # placed when adopted, and it answered in time
                    adopted(handle)
                placed.add(handle)
                if what == "start" or result.get("reported") is False:  # or placed while no driver watched
                    keys = ("node", "ip", "hostname", "pid", "workdir", "actor_pid")
                    _out({"op": "placed", "handle": handle, **{k: result[k] for k in keys if k in result}})
                    if what == "adopt":
                        actors[handle].where.remote()  # the actor notes that its placement was reported
            refs[actors[handle].wait.remote(0 if what == "adopt" else POLL_S)] = (handle, "wait")
        now = time.monotonic()
        for handle, (_, due) in list(adopting.items()):
            if now >= due:  # not answering yet (busy, or its node dying): watched, not given up
                state = actor_state(ray, actors[handle])
                if state not in WAITING:  # placed (or unknown): its runner is signalled, not its actor killed
                    placed.add(handle)
                adopted(handle, waiting=state or "unknown")
        for handle, due in list(kill_at.items()):
            if now >= due and handle in actors:  # SIGKILL did not end it (the actor hangs): end the actor
                ended(handle, signal=9)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
