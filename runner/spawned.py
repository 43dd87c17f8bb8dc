"""Processes the workflow starts with ``multiprocessing``'s ``spawn`` or ``forkserver`` start methods get the
session's ``ctx`` too, and their events are recorded through the runner.

Such a process is a new interpreter (``spawn``), or a fork of a server process that is one (``forkserver``): it has
none of the runner's memory, so :mod:`labd.runner.forksafe`'s handling of forked children does not reach it. Before,
``labd.context()`` failed there and its agents' LLM calls went unrecorded; only its output was (its stdout and
stderr are the runner's capture pipes). Now:

* **In the runner** (:func:`install`), two functions of ``multiprocessing`` are wrapped. ``spawn.
  get_preparation_data`` (what the parent pickles to every new process: ``sys.path``, the main module, the working
  directory) gains a ``labd`` entry: the descriptor number of the relay's children's end, the step current in the
  spawning thread, the child's node-id prefix (``f<j>.``, ``j`` a fork number, as a forked child's), and the session's
  setup (id, work directory, parameters, secrets and the agent configuration). It travels through the pipe or socket
  ``multiprocessing`` already uses, never the environment or a file. ``util.spawnv_passfds`` (the ``exec`` of a
  spawned child and of the forkserver) passes the relay's end on, at the same number, to those two only (not to
  the resource tracker, which lives as long as the runner and would hold the relay open at the session's end).
* **In the child**, ``multiprocessing`` imports the parent's main module, ``labd.runner.template`` (or, for a
  runner on a Ray node, ``labd.runner.remote``), as ``__mp_main__`` while it applies that data; that module then
  calls :func:`attach`, which finds the data, checks
  that the descriptor is the relay's kind of socket, and makes the context: events go to the runner over the relay
  (:func:`labd.runner.forked.child_sender`: gap-free ``src_seq`` there, a child's ``llm.response`` linked to its
  request), log records too, ``labd.context()`` answers, ``ctx.agent`` builds recorded agents, and ag2 agents built
  directly are tracked once ``ag2`` is imported.
* **What such a child cannot do**, as a forked one: ask for an approval or pause (no answer could reach it); its
  steps neither checkpoint nor scan the work directory (the runner's next scan records its files); its events are
  durable once the runner took them in. Not counted against the session's output cap in the child (the daemon's
  backstop still bounds them). A worker is attributed to the step current in the thread that started it (a pool's
  replacement workers, started by its handler thread, to none); a process such a child forks numbers its nodes
  under a prefix of its own. The forkserver and multiprocessing's resource tracker live as long as the runner and
  hold its output pipes (the forkserver the relay too): the waits at the session's end stop waiting for them once
  only they are left (:mod:`labd.runner.mphelpers`; stopping them early would unlink semaphores the runner still
  holds).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import itertools
import logging
import multiprocessing.spawn as mp_spawn  # imported with the runner stack, before the template forks runners
import multiprocessing.util as mp_util
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from labd.runner import forksafe
from labd.runner.files import FileTracker

__all__ = ["install", "attach", "KEY"]

#: the key of the preparation data that carries the child's setup
KEY = "labd"


def install(fd: Callable[[], int], max_message: int, spill_dir: Path, setup: Mapping[str, Any],
            node: Callable[[], str | None], child_prefix: Callable[[], str]) -> None:
    """In the runner: wrap ``multiprocessing``'s preparation data and its ``exec`` of new processes. ``fd`` gives
    the relay's children's end (starting its thread; -1 once the relay is closed: then children get nothing),
    ``setup`` what the child's context is made from (:func:`setup_of`), ``node`` the step current in the calling
    thread, ``child_prefix`` a new child's node-id prefix (:func:`labd.runner.forksafe.child_prefix`)."""
    prepared, passfds = mp_spawn.get_preparation_data, mp_util.spawnv_passfds

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = prepared(name)
        relay = fd()
        if name != "ignore" and relay >= 0:  # "ignore": the forkserver's own start (keeps the main path, sys.path)
            data[KEY] = {"fd": relay, "max_message": max_message, "spill": str(spill_dir), "node": node(),
                         "prefix": child_prefix(), **setup}
        return data

    def spawnv_passfds(path: Any, args: Sequence[Any], fds: Sequence[int]) -> Any:
        if "--multiprocessing-fork" in args or any("forkserver import main" in str(a) for a in args):
            relay = fd()
            if relay >= 0:  # not after the session's end (the relay closed): the process starts without it
                fds = (*fds, relay)
        return passfds(path, args, fds)

    mp_spawn.get_preparation_data = get_preparation_data
    mp_util.spawnv_passfds = spawnv_passfds  # type: ignore[assignment]


def attach() -> None:
    """In a process ``multiprocessing`` spawned from the runner, while it imports the runner's main module: make
    the session's context (see the module doc). Does nothing where there is no such setup."""
    setup = _preparation_data()
    if not isinstance(setup, dict):
        return
    sock = _relay_socket(setup.get("fd"))
    if sock is None:
        return
    from labd.runner.approvals import Approvals
    from labd.runner.context import Context, current_node
    from labd.runner.forked import child_sender
    from labd.runner.logsetup import configure_logging

    emit = child_sender(sock, Path(setup["spill"]), int(setup["max_message"]))
    session_id, workdir = str(setup["session"]), Path(setup["workdir"])
    log = configure_logging(emit, session_id)
    ctx = Context(session_id, workdir, setup.get("params") or {}, emit, log, setup.get("secrets") or {})
    ctx._node_prefix = str(setup.get("prefix") or "f0.")  # noqa: SLF001 - its node ids: "f<j>.<i>"
    ctx._node_ids = itertools.count(1)  # noqa: SLF001
    ctx._pause = None  # noqa: SLF001 - no resume could reach this process
    ctx.wait_paused = forksafe.cannot_pause  # type: ignore[method-assign]
    ctx.approvals = Approvals(emit, ctx._cancel)  # noqa: SLF001
    ctx.approvals.forked = True  # an answer could not reach this process: asking raises at once
    if setup.get("node"):
        current_node.set(str(setup["node"]))
    ctx._agents = lambda: _agents(ctx, emit, setup)  # noqa: SLF001
    _track_ag2_when_imported(ctx.agent_factory)
    # its own spawned processes get the relay too (passed on at the same number), their node ids under its own
    install(sock.fileno, int(setup["max_message"]), Path(setup["spill"]),
            {k: setup[k] for k in _SETUP_KEYS if k in setup}, current_node.get, lambda: forksafe.child_prefix(ctx))
    # ... and a process it forks numbers its nodes under a prefix of its own (its events' references carry its pid)
    os.register_at_fork(before=forksafe.reserve_fork, after_in_parent=forksafe.forget_reserved,
                        after_in_child=lambda: _forked(ctx))


def _forked(ctx: Any) -> None:
    """In a process forked by a spawned child: node ids ``<the child's prefix>f<j>.<i>``."""
    ctx._node_prefix = forksafe.child_prefix(ctx)  # noqa: SLF001
    ctx._node_ids = itertools.count(1)  # noqa: SLF001


#: the session spec's keys a child's agents are configured from (as the runner's: runner/session.py)
_AGENT_KEYS = ("models", "prices", "limits", "mcp_servers", "roles", "agent_overrides", "policy")
#: what :func:`setup_of` gives a child (besides the relay's descriptor, its step and node-id prefix)
_SETUP_KEYS = ("session", "workdir", "params", "secrets", *_AGENT_KEYS)


def setup_of(session_id: str, workdir: Path, spec: Mapping[str, Any], secrets: Mapping[str, str]) -> dict[str, Any]:
    """The setup a spawned child's context is made from: the session's id, work directory and parameters, its
    secrets, and what its agents are configured with."""
    return {"session": session_id, "workdir": str(workdir), "params": dict(spec.get("params") or {}),
            "secrets": dict(secrets), **{k: spec.get(k) for k in _AGENT_KEYS}}


def _preparation_data() -> Any:
    """The ``labd`` entry of the preparation data ``multiprocessing.spawn.prepare`` is applying (it imports the main
    module from there, which calls us): a local of that frame, the only place it is kept."""
    prepare = getattr(sys.modules.get("multiprocessing.spawn"), "prepare", None)
    code = getattr(prepare, "__code__", None)
    frame = sys._getframe(1)  # noqa: SLF001
    while frame is not None:
        if frame.f_code is code:
            data = frame.f_locals.get("data")
            return data.get(KEY) if isinstance(data, dict) else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _relay_socket(fd: Any) -> socket.socket | None:
    """The relay's end at ``fd``, if that is what is there (a Unix sequenced-packet socket), kept from programs this
    process ``exec``s (they would hold the relay open); else None."""
    if not isinstance(fd, int) or fd < 0:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        return None
    with contextlib.suppress(OSError):
        os.set_inheritable(fd, False)
    return sock


def _agents(ctx: Any, emit: Callable[..., int], setup: Mapping[str, Any]) -> Any:
    """The child's agent factory: configured as the runner's, recording through the relay; approvals raise."""
    from labd.runner.agents import AgentFactory

    workdir = Path(setup["workdir"])
    return AgentFactory(emit=emit, new_node_id=ctx.new_node_id, workdir=workdir, models=setup.get("models") or {},
                        prices=setup.get("prices") or {}, secrets=setup.get("secrets") or {}, approvals=ctx.approvals,
                        files=_NoScan(workdir, emit), limits=setup.get("limits"),
                        mcp_servers=setup.get("mcp_servers") or {}, roles=setup.get("roles") or None,
                        role_overrides=setup.get("agent_overrides") or {}, policy=setup.get("policy"))


class _NoScan(FileTracker):
    """A file tracker that leaves scanning to the runner (a fresh one here would report every file as new)."""

    def scan(self, node_id: str | None, agent: str | None = None, tool: str | None = None,
             step: str | None = None, exact: bool = False, final: bool = False) -> int:
        return 0


def _track_ag2_when_imported(factory: Callable[[], Any]) -> None:
    """Track every ag2 agent of this process (:func:`labd.runner.agents.hooks.track_all_agents`) once ``ag2`` is
    imported, without importing it here (a second or more per child that may never use it)."""

    def track() -> None:
        from labd.runner.agents.hooks import track_all_agents

        track_all_agents(factory)

    if "ag2" in sys.modules:
        track()
        return
    sys.meta_path.insert(0, _AfterImport("ag2", track))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` right after the module ``name`` has been executed (once), then steps aside."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, then = spec.loader, self.then
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            try:
                then()
            except Exception:  # noqa: BLE001 - tracking must never make the workflow's own import fail
                logging.getLogger("labd.runner.spawned").exception("ag2 agents of this process are not tracked")

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
