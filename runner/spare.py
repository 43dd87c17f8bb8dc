"""The warm spare runner: a child of the template that has done every session-independent step of a
runner's start and waits for the one spec it will ever run.

The template (:mod:`labd.runner.template`) keeps at most one spare. A launch hands the spec to the spare
over its private pipe (one JSON document, then end of file) instead of forking, so the fork and the first
touch of the runner's hot code (copy-on-write page faults, ZeroMQ's and the thread machinery's first use,
the output pipes, the Landlock path walk) are paid before the request, not after it. See docs/design.md,
"Start latency".

Rules that keep a spare safe:

- it has **no thread** while it waits (Landlock, applied after the spec arrives, confines only the calling
  thread and what it starts later; see :mod:`labd.runner.credentials`): the dry pass joins what it starts;
- it holds **no session's state**: no key, no secret, no socket (the dry ZeroMQ context is terminated); the
  spool file it prepares is empty and unnamed (``O_TMPFILE``) until the one session it runs names it;
  its environment is the template's, which the daemon started without secrets;
- it runs **one** spec at most: the pipe carries one document, and the template closes its end after it;
- it **dies with the template**: end of file without a spec (the template exited or was killed; the write
  end lives only in the template, every other child closes it) makes it exit at once.
"""

from __future__ import annotations

import json
import os
import select
import threading
from typing import Any

__all__ = ["warm_up", "wait_for_spec", "refresh", "single_threaded", "hints_of", "HINT_KEYS", "take_spool"]

#: spec fields the template passes on to the next spare (session-independent: the daemon's hide lists and
#: where session directories are), so the spare can walk the filesystem for its Landlock rules and prepare a
#: spool file before the spec arrives
HINT_KEYS = ("sandbox_hide", "confine_hide", "spool_dir", "cgroup_next")

#: the spool file the warm-up prepared (runner/spool.py, prepare_unnamed): unnamed until a session takes it
_spool: tuple[int, Any] | None = None


def take_spool() -> tuple[int, Any] | None:
    """The prepared spool file (fd, map), once; None if there is none (no spare, or it could not be made)."""
    global _spool
    prepared, _spool = _spool, None
    return prepared


def hints_of(spec: dict[str, Any]) -> dict[str, list[str]]:
    """The session-independent parts of ``spec`` a later spare prepares for (see :data:`HINT_KEYS`)."""
    out: dict[str, list[str]] = {}
    sandbox = spec.get("sandbox") or {}
    if sandbox.get("mechanism") == "landlock" and sandbox.get("hide"):
        out["sandbox_hide"] = [str(p) for p in sandbox["hide"]]
    confine = spec.get("confine") or {}
    if confine.get("hide"):
        out["confine_hide"] = [str(p) for p in confine["hide"]]
    if spec.get("cgroup_next"):  # the group the daemon made for the next runner (daemon/cgroups.py)
        out["cgroup_next"] = [str(p) for p in spec["cgroup_next"]]
    if not spec.get("spool") and spec.get("workdir"):  # <sessions>/<id>/work: the spool goes in <sessions>/<id>
        out["spool_dir"] = [os.path.dirname(os.path.dirname(os.path.abspath(str(spec["workdir"]))))]
    return out


def warm_up(hints: dict[str, list[str]]) -> None:
    """The dry pass: touch what every runner's start touches, leaving no thread and no socket behind. What it
    keeps (the output pipes, a Landlock ruleset not yet enforced, cached walks) is for the session to use."""
    import zmq

    from labd.runner.capture import prepare_pipes
    from labd.runner.cgroup_join import join_cgroup

    # First, so what the warm-up touches is charged to it: the next session's group, joined now (a move between
    # groups can take 10 ms: paid here, not when the spec arrives; the session's limits are set on it at launch)
    join_cgroup(hints.get("cgroup_next"))
    from labd.runner.credentials import prepare_confinement
    from labd.runner.sandbox import landlock

    # ZeroMQ: the first context, socket, monitor and connect of a process cost ~10 ms of page faults and
    # lazy set-up; a terminated context leaves no I/O thread behind.
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect("inproc://labd-spare-warm-up")  # nothing listens: no traffic, no file
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
    finally:
        ctx.term()
    # as many threads as a runner starts (channel, output readers): their stacks stay cached for reuse
    threads = [threading.Thread(target=lambda: None, name="labd-warm-up") for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prepare_pipes()  # the output pipes, sized; installed on fds 1 and 2 only once a session owns them
    # The Landlock walks of the last spec's hide lists (checked for staleness when used: landlock.py) and
    # the runner's own ruleset without its session's directory (enforced only once the spec is here)
    if hints.get("sandbox_hide"):
        landlock.walk(hints["sandbox_hide"])
    if hints.get("confine_hide"):
        prepare_confinement(hints["confine_hide"])
    if hints.get("spool_dir"):  # the session's spool file, unnamed (it vanishes with us if no session comes)
        _prepare_spool(hints["spool_dir"][0])
    # Pure functions of every start, run once on throwaway input: their first call in a forked process
    # pays for copy-on-write faults and lazy caches (~3 ms for invalidate_caches alone); the second is cheap.
    import importlib

    import psutil

    from labd.ipc.wire import Codec, encode_json
    from labd.runner.logsetup import configure_logging
    from labd.runner.secret_env import split_secrets
    from labd.runner.workflows.registry import bind_params, resolve

    psutil.Process().create_time()
    split_secrets(dict(os.environ))
    importlib.invalidate_caches()
    configure_logging(lambda *_a, **_k: 0, "spare")  # configured again, for real, by the session
    codec = Codec(bytes(32))
    codec.pack_events("spare", [encode_json([1, 0.0, "session.started", None, None, {"pid": 0}])])
    _warm_channel()
    bind_params(resolve("demo.count"), {"n": 1})
    json.loads(json.dumps({"warm": [1, 2.0, "x", None]}))


def _prepare_spool(directory: str) -> None:
    global _spool
    from labd.runner.spool import prepare_unnamed

    try:
        _spool = prepare_unnamed(directory)
    except OSError:  # no O_TMPFILE there (or no such directory yet): the session makes its spool itself
        _spool = None


def _warm_channel() -> None:
    """A throwaway channel, used once: the first ``Channel()`` and emit of a forked process cost ~1-2 ms of
    copy-on-write faults and first calls (measured in a fork of the template: 1.25 ms for the first
    ``Channel()``, 0.06 ms for the second). Its thread is never started and its pipe is closed: nothing of it
    outlives this call. No spool file: a file made and removed in a directory the Landlock walks list (the
    temp directory) would make those walks stale, costing the session a new walk (runner/sandbox/landlock.py)."""
    from labd.runner.channel import Channel

    ch = Channel("inproc://labd-spare-warm-up", bytes(32), "spare")
    ch.emit("session.started", {"pid": 0, "workdir": "", "runner_confinement": None})
    ch.emit("output", {"stream": "stdout", "text": "warm\n"}, None)
    ch.discard()


def single_threaded() -> bool:
    """True if this process has one thread (Python's or any library's: the kernel's count)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


#: while waiting, a spare checks this often whether its prepared Landlock walk went stale, and redoes it
REFRESH_S = 2.0


def refresh(hints: dict[str, list[str]]) -> None:
    """Redo what the warm-up prepared from ``hints`` if the filesystem changed under it (runs while waiting)."""
    from labd.runner.credentials import refresh_confinement
    from labd.runner.sandbox import landlock

    if hints.get("sandbox_hide"):
        landlock.walk(hints["sandbox_hide"])  # walks again only if stale
    if hints.get("confine_hide"):
        refresh_confinement(hints["confine_hide"])


def wait_for_spec(fd: int, hints: dict[str, list[str]] | None = None) -> dict[str, Any] | None:
    """Block until the template sends the spec (all of it, then end of file); None when the pipe ends
    without one (the template is gone or dropped this spare): the caller exits. Meanwhile, every
    :data:`REFRESH_S`, refresh what was prepared from ``hints``."""
    if hints and not (hints.get("sandbox_hide") or hints.get("confine_hide")):
        hints = None  # nothing to keep fresh (the prepared spool does not go stale): no periodic wake-up
    while hints and not select.select([fd], [], [], REFRESH_S)[0]:
        try:
            refresh(hints)
        except Exception:  # noqa: BLE001 - an optimisation only: the session prepares what is missing
            hints = None
    chunks: list[bytes] = []
    while True:
        try:
            part = os.read(fd, 1 << 20)
        except InterruptedError:
            continue
        if not part:
            break
        chunks.append(part)
    os.close(fd)
    if not chunks:
        return None
    try:
        spec = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None
