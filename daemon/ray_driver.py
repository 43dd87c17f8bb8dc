"""``python -m labd.daemon.ray_driver ADDRESS NAMESPACE``: the Ray launcher's driver process (JSON lines on
stdin/stdout).

Ray is a heavy client (a core worker with its own threads, gRPC, signal handlers): it runs in this child of the
daemon, never inside the daemon, exactly as the template launcher keeps forking out of the daemon. The daemon
side is :class:`labd.daemon.ray_launcher.RayLauncher`. Requests (one JSON object per line on stdin):

- ``{"op": "spawn", "req", "handle", "sid", "spec", "options"}``: create the session's actor
  (:class:`labd.runner.ray_actor.SessionActor`, ``options`` = its Ray resource request; *detached*, named
  ``labd-<session>`` in ``NAMESPACE``, so it outlives this driver) and start the runner in it. Answered at once
  with ``{"op": "spawned", "req"}`` (or ``"error"`` when no node of the cluster could ever satisfy the request);
  placement happens afterwards and is reported as ``{"op": "placed", "handle", ...}``.
- ``{"op": "adopt", "req", "handle", "sid"}``: find the actor a previous driver created for the session and
  watch it from now on: ``{"op": "adopted", "req"}`` with ``"error"`` (why it is lost) when it is not there, is
  dead, or never started its runner.
- ``{"op": "sweep"}``: kill every labd actor of ``NAMESPACE`` this driver does not watch (left by a session that
  ended, or was deleted, when no daemon could end its actor).
- ``{"op": "signal", "handle", "sig"}``: signal the runner's group on its node. A SIGKILL also kills the actor
  (``ray.kill``) if the runner has not ended :data:`KILL_ACTOR_AFTER_S` later.

Reports: ``{"op": "note", "handle", "note"}`` (the node monitor's limit breaches and samples) and
``{"op": "exited", "handle", "exit_code", "signal", "reason"}`` -- ``reason`` set when the actor or its node was
lost (Ray's own account of why); the actor of a session that ended is killed. End of stdin: the driver exits;
the detached actors keep running their sessions for the next daemon to adopt.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from typing import Any

from labd.daemon.ray_adopt import actor_name

__all__ = ["main"]

POLL_S = 0.5  # the actor's long poll: notes reach the daemon at least this often
KILL_ACTOR_AFTER_S = 3.0
ADOPT_TIMEOUT_S = 30.0  # an actor that does not answer describe() within this is not adopted


def _out(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _reason(exc: BaseException) -> str:
    """Ray's account of an actor's death, shortened to its first meaningful line."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "ray.exceptions")):
            return f"Ray actor lost: {line}"[:500]
    return f"Ray actor lost: {type(exc).__name__}"


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


def _adopt(ray: Any, name: str, namespace: str) -> tuple[Any, str | None]:
    """The live actor named ``name`` whose runner started, or (None, why the session is lost)."""
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None, (f"Ray actor {name} not found (killed, or its node died, while no daemon ran; "
                      f"namespace {namespace})")
    try:
        info = ray.get(actor.describe.remote(), timeout=ADOPT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - dead, or its node gone: lost
        return None, _reason(exc)
    if not info.get("started"):
        _kill(ray, actor)
        return None, f"Ray actor {name} was found but never started its runner (the previous daemon stopped first)"
    return actor, None


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


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "auto"
    namespace = sys.argv[2] if len(sys.argv) > 2 else "labd"
    try:
        import ray
    except ImportError:
        _out({"op": "error", "message": "[launcher] names a Ray cluster, but Ray is not installed: "
                                        "pip install 'labd[ray]' (or remove [launcher] address/kind from config.toml)"})
        return
    try:
        from labd.runner.ray_actor import SessionActor

        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
        Actor = ray.remote(max_concurrency=4)(SessionActor)  # type: ignore[call-overload]  # wait() blocks one thread; signal() needs another
    except Exception as exc:  # noqa: BLE001 - reported to the daemon, which refuses to start
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
    actors: dict[int, Any] = {}
    names: dict[int, str] = {}  # handle -> actor name
    refs: dict[Any, tuple[int, str]] = {}  # in-flight call -> (handle, "start" | "wait")
    kill_at: dict[int, float] = {}

    def ended(handle: int, **fields: Any) -> None:
        actor = actors.pop(handle, None)
        names.pop(handle, None)
        kill_at.pop(handle, None)
        for ref, (h, _) in list(refs.items()):
            if h == handle:
                del refs[ref]
        _out({"op": "exited", "handle": handle, "exit_code": fields.get("exit_code"),
              "signal": fields.get("signal"), "reason": fields.get("reason")})
        if actor is not None:  # detached: it would outlive the session
            _kill(ray, actor)

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
                why = _feasible(ray, msg["options"])
                if why is not None:
                    _out({"op": "spawned", "req": msg["req"], "error": why})
                    continue
                name = actor_name(msg["sid"])
                _free_name(ray, name, namespace)
                try:
                    actor = Actor.options(name=name, namespace=namespace, lifetime="detached",
                                          **msg["options"]).remote(msg["sid"])
                except Exception as exc:  # noqa: BLE001 - e.g. the name still taken: the launch fails
                    _out({"op": "spawned", "req": msg["req"], "error": f"cannot create the actor: {exc}"[:1000]})
                    continue
                actors[handle], names[handle] = actor, name
                refs[actor.start.remote(msg["spec"])] = (handle, "start")
                _out({"op": "spawned", "req": msg["req"]})
            elif op == "adopt":
                name = actor_name(msg["sid"])
                actor, why = _adopt(ray, name, namespace)
                if actor is None:
                    _out({"op": "adopted", "req": msg["req"], "error": why})
                    continue
                actors[handle], names[handle] = actor, name
                refs[actor.wait.remote(0)] = (handle, "wait")
                _out({"op": "adopted", "req": msg["req"]})
            elif op == "sweep":
                _sweep(ray, namespace, set(names.values()))
            elif op == "signal" and handle in actors:
                actors[handle].signal.remote(int(msg["sig"]))
                if int(msg["sig"]) == 9:
                    kill_at.setdefault(handle, time.monotonic() + KILL_ACTOR_AFTER_S)
        if not refs:
            continue
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.05)
        for ref in ready:
            handle, what = refs.pop(ref)
            if handle not in actors:
                continue
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the actor (or its node) died: the session is lost
                ended(handle, reason=_reason(exc))
                continue
            if what == "start":
                _out({"op": "placed", "handle": handle, **result})
            else:
                for note in result["notes"]:
                    _out({"op": "note", "handle": handle, "note": list(note)})
                if result["exited"]:
                    ended(handle, exit_code=result["exit_code"], signal=result["signal"])
                    continue
            refs[actors[handle].wait.remote(POLL_S)] = (handle, "wait")
        now = time.monotonic()
        for handle, due in list(kill_at.items()):
            if now >= due and handle in actors:  # SIGKILL did not end it (the actor hangs): end the actor
                ended(handle, signal=9)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
