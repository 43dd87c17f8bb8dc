"""The context object a workflow receives: params, workdir, steps, agents, approvals, cancellation.

Workflow code holds no tracking code of its own: output, logs, steps, agent activity, costs and files
become events through this object, each attributed to the session and to the current DAG node.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from labd.ipc.errors import describe_exception
from labd.runner.interrupts import Cancelled, Interruptible
from labd.runner.withhold import head_cut

if TYPE_CHECKING:
    from labd.runner.approvals import Approvals, Decision

__all__ = ["Context", "Cancelled", "Node", "current_node", "current"]

Emit = Callable[..., int]
T = TypeVar("T")

#: a step's name beyond this many characters is cut (deterministically: a resumed run cuts it the same way), so one
#: step named with a whole document cannot make the session's DAG larger than a reply may be
MAX_STEP_NAME = 1000
#: ... and a step's error (an exception's text, a skip's reason) beyond this many
MAX_STEP_ERROR = 10_000


def clip(text: str | None, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many more there were (the same cut every time); never inside a
    secret the session's events withhold (a piece of one would be recorded: the channel finds only whole values)."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    cut = head_cut(text, limit)
    return f"{text[:cut]}… ({len(text) - cut} more)"

#: the DAG node the calling code is inside (per thread / task, so concurrent steps attribute correctly)
current_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("labd_node", default=None)


_current: Context | None = None


class Node:
    """A step (DAG node) that is open; ``id`` is unique in the session."""

    def __init__(self, node_id: str, name: str) -> None:
        self.id = node_id
        self.name = name
        self.error: str | None = None
        #: what the step produced, for later code: recorded in its checkpoint and, when a resumed or
        #: branched session skips the completed step, restored here (``with ctx.step(...) as s:
        #: s.result = work()``; then use ``s.result`` after the block)
        self.result: Any = None
        #: True when the step was not executed but restored from the record (resume, branch)
        self.reused = False

    def fail(self, error: str) -> None:
        """Mark the step ``failed`` with ``error`` when it ends, without raising (e.g. an attempt whose
        agent reported an error: the workflow goes on with a retry)."""
        self.error = error


def current() -> Context:
    """The running session's context (``labd.context()``), for code that was not handed ``ctx``, such as a
    plain function sent with ``Client.submit``. A runner runs one session, so one per process is right."""
    if _current is None:
        raise RuntimeError("labd.context() is only available inside a labd session")
    return _current


class Context(Interruptible):
    """What a workflow function gets as its first argument (pause and cancellation: :mod:`labd.runner.interrupts`)."""

    def __init__(self, session_id: str, workdir: Path, params: Mapping[str, Any], emit: Emit,
                 log: Any, secrets: Mapping[str, str]) -> None:
        self.session_id = session_id
        self.workdir = workdir
        self.params = MappingProxyType(dict(params))
        self.log = log
        self._emit = emit
        self._secrets = MappingProxyType(dict(secrets))
        self._node_ids = itertools.count(1)
        #: node ids are <prefix><number>: "n" in the runner, "f<j>." in a child the workflow forked (forksafe)
        self._node_prefix = "n"
        self._init_interrupts()
        #: the innermost open step of the main thread (for output, which is read on another thread)
        self.active_node: str | None = None
        #: called before each step boundary (the runner drains captured output there)
        self.before_boundary: Callable[[], None] = lambda: None
        #: called after each step (the runner scans the work directory there)
        self.after_step: Callable[[str], None] = lambda node_id: None
        self._last_done: dict[str | None, str] = {}
        self._lock = threading.Lock()
        self.approvals: Approvals | None = None
        self._agents: Callable[[], Any] | None = None
        #: file attribution under concurrency: every step's parent, the steps open now, and the steps that
        #: were open at some time since the last work-directory scan
        self._parents: dict[str, str | None] = {}
        self._open: set[str] = set()
        self._window: set[str] = set()
        self._agent_factory: Any = None
        self._factory_lock = threading.Lock()  # one factory, one tracker and one budget for all threads
        #: durable steps (labd.runner.durable.Durable): positions, checkpoints, the record to skip
        self.durable: Any = None
        #: a branch's hypothesis and instructions (``labd branch --hypothesis/--instructions``), else None
        self.hypothesis: str | None = None
        self.instructions: str | None = None
        global _current
        _current = self  # the newest context is the session's (see current())

    def _here(self) -> str | None:
        return current_node.get()

    def new_node_id(self) -> str:
        return f"{self._node_prefix}{next(self._node_ids)}"

    # ---- events -----------------------------------------------------------------------------------
    #: where custom events go: the runner sets it to its emit charged to the session's output cap, which custom
    #: events count against (``Channel.emit(..., cap=)``: runner/outputcap.py); None: the context's own emit
    emit_capped: Callable[..., int] | None = None

    def emit(self, name: str, data: Any = None) -> None:
        """Record a custom event ``name`` with JSON-serialisable ``data``, attributed to the current step (unless
        the session's output cap is spent: then it is dropped, and counted in its ``output.truncated``)."""
        (self.emit_capped or self._emit)("custom", {"name": name, "data": data}, current_node.get())

    @contextmanager
    def step(self, name: str, *, kind: str = "step", depends_on: Iterable[str] | None = None,
             redo_of: str | None = None, attempt: int | None = None, retry_of: str | None = None,
             planned: str | None = None) -> Iterator[Node]:
        """Open a DAG node (``kind`` step or phase) around a block; checks for pause and cancellation.

        Edges into the node: ``contains`` from the enclosing node, ``dependency`` from each id in
        ``depends_on`` (or, when it is None, ``sequence`` from the previous finished sibling), and
        ``redo`` from ``redo_of``, ``retry`` from ``retry_of`` (the failed attempt this one retries).
        ``planned``: the id :meth:`plan` gave this step, so the planned node becomes the running one.
        Emits ``step.started`` and ``step.finished`` (completed, failed or cancelled; ``failed`` also
        when the block called ``node.fail(error)``).
        """
        self.check_cancelled()
        self._maybe_pause()
        parent = current_node.get()
        name = clip(name, MAX_STEP_NAME)
        node = Node(planned or self.new_node_id(), name)
        edges: list[list[str]] = []
        if retry_of:
            edges.append([retry_of, "retry"])
        elif depends_on is None and not redo_of:  # a redo's link to its predecessor is the redo edge
            with self._lock:
                prev = self._last_done.get(parent)
            if prev:
                edges.append([prev, "sequence"])
        elif depends_on is not None:
            edges.extend([dep, "dependency"] for dep in depends_on)
        if redo_of:
            edges.append([redo_of, "redo"])
        payload: dict[str, Any] = {"name": name, "kind": kind, "edges": edges}
        if parent:
            payload["parent_node"] = parent
        if redo_of:
            payload["redo_of"] = redo_of
        if attempt is not None:
            payload["attempt"] = attempt
        if planned:
            payload["planned"] = True
        durable = self.durable
        path = durable.position(parent) if durable is not None else ""
        if durable is not None:  # the step's place in the workflow: what a replay matches (ids jump at a resume)
            payload["path"] = path
        rec = durable.recorded(path, name) if durable is not None else None
        if rec is not None:  # completed in the record: restored, not executed (labd.runner.durable)
            yield from self._reused(node, rec, path, payload, parent)
            return
        if durable is not None:
            durable.bind(node.id, path)
        self.before_boundary()
        self._emit("step.started", payload, node.id)
        with self._lock:
            self._parents[node.id] = parent
            self._open.add(node.id)
            self._window.add(node.id)
        token = current_node.set(node.id)
        outer, main = self.active_node, threading.current_thread() is threading.main_thread()
        if main:
            self.active_node = node.id
        start, opener = time.monotonic(), os.getpid()
        status, error = "completed", None
        try:
            yield node
        except Cancelled:
            status, error = "cancelled", self.cancel_reason or "cancelled"
            raise
        except BaseException as exc:
            status, error = "failed", describe_exception(exc)
            raise
        else:
            if node.error is not None:
                status, error = "failed", node.error
        finally:
            if os.getpid() != opener:
                # A process the workflow forked inside the block leaves it: the step is its opener's, which alone
                # checkpoints and finishes it (a child's own steps are f<j>.<i>: runner/forksafe.py). The child
                # only stops attributing its own later events and steps to it.
                current_node.reset(token)
                if main:
                    self.active_node = outer
            else:
                self.before_boundary()
                with self._lock:  # closed before its scan, so the next window starts without it
                    self._open.discard(node.id)
                self.after_step(node.id)
                try:  # a failed checkpoint records the step failed itself and raises (runner/durable.py) ...
                    if status == "completed" and durable is not None:
                        durable.checkpoint(node.id, path, name, node.result)
                finally:  # ... and still leaves the node, so later events are not attributed to it
                    current_node.reset(token)
                    if main:
                        self.active_node = outer
                done: dict[str, Any] = {"name": name, "status": status, "duration": time.monotonic() - start}
                if error:
                    done["error"] = clip(error, MAX_STEP_ERROR)
                self._emit("step.finished", done, node.id)
                with self._lock:
                    self._last_done[parent] = node.id
        self.check_cancelled()

    def _reused(self, node: Node, rec: dict[str, Any], path: str, payload: dict[str, Any],
                parent: str | None) -> Iterator[Node]:
        """The body of a step the record holds as completed: skipped, its result restored. A branch shows it
        as a ``reused`` node (so does a planned node a resume re-announced); a resume's record has it already."""
        from labd.runner.skipbody import SkipBody, skip_with_body

        durable = self.durable
        if not payload.get("planned"):
            node.id = str(rec.get("node") or node.id)
        node.result = durable.result_of(rec)
        node.reused = True
        durable.bind(node.id, path)
        if durable.mode == "branch" or payload.get("planned"):
            self._emit("step.started", payload, node.id)
            if durable.mode == "branch":
                durable.reused_checkpoint(node.id, path, rec)
            self._emit("step.finished", {"name": node.name, "status": "reused", "duration": 0.0}, node.id)
        with self._lock:
            self._last_done[parent] = node.id
        undo = skip_with_body(sys._getframe(3))  # noqa: SLF001 - the frame of the `with` (via step, __enter__)
        try:
            yield node
        except SkipBody:
            pass
        finally:
            undo()

    def retrying(self, name: str, failed: Node, attempt: int, of: int | None = None) -> None:
        """Record that ``name`` is tried again as attempt number ``attempt`` after the ``failed`` attempt
        (a ``retry`` event with that attempt's real error). Each attempt is its own step::

            previous = None
            for n in range(1, tries + 1):
                if previous is not None:
                    ctx.retrying("step 1", previous, n, tries)
                with ctx.step(f"step 1 (attempt {n})", attempt=n, retry_of=previous and previous.id) as node:
                    result = work(previous and previous.error)
                    if not result.ok:
                        node.fail(result.error)   # status failed, with its error
                if node.error is None:
                    break
                previous = node
        """
        payload: dict[str, Any] = {"name": name, "attempt": attempt, "error": failed.error or "failed",
                                   "previous_node": failed.id}
        if of is not None:
            payload["of"] = of
        self._emit("retry", payload, current_node.get())

    def plan(self, names: Iterable[str], *, kind: str = "step") -> list[str]:
        """Announce steps that will run later: each becomes a DAG node with status ``planned`` (nested in
        the current step) until ``ctx.step(name, planned=<its id>)`` runs it. Returns the node ids."""
        parent = current_node.get()
        ids = []
        for name in (clip(n, MAX_STEP_NAME) for n in names):
            node_id = self.new_node_id()
            payload: dict[str, Any] = {"name": name, "kind": kind}
            if parent:
                payload["parent_node"] = parent
            self._emit("step.planned", payload, node_id)
            ids.append(node_id)
        return ids

    def concurrent_with(self, node_id: str | None) -> list[str]:
        """Steps that may also have written what a work-directory scan for ``node_id`` finds: those open at
        some time since the previous scan that are neither ``node_id``, its ancestors nor its descendants.
        Starts the next window (what is still open stays in it)."""
        with self._lock:
            window, self._window = self._window, set(self._open)
            if node_id is None:
                return sorted(window)
            mine = self._ancestors(node_id) | {node_id}
            return sorted(m for m in window if m not in mine and node_id not in self._ancestors(m))

    def _ancestors(self, node_id: str) -> set[str]:
        out: set[str] = set()
        parent = self._parents.get(node_id)
        while parent is not None and parent not in out:
            out.add(parent)
            parent = self._parents.get(parent)
        return out

    def skip(self, name: str, reason: str, *, kind: str = "step") -> str:
        """Record a step that was decided against (e.g. rejected by a human): a node with status skipped."""
        parent = current_node.get()
        node_id = self.new_node_id()
        name, reason = clip(name, MAX_STEP_NAME), clip(reason, MAX_STEP_ERROR)
        payload: dict[str, Any] = {"name": name, "kind": kind, "edges": []}
        if parent:
            payload["parent_node"] = parent
        self._emit("step.started", payload, node_id)
        self._emit("step.finished", {"name": name, "status": "skipped", "duration": 0.0, "error": reason}, node_id)
        return node_id

    # ---- agents -----------------------------------------------------------------------------------
    def agent(self, name: str, system_prompt: str | Iterable[str] = (), *, model: Any = "default",
              tools: Iterable[Any] = (), code_execution: bool = False, **kwargs: Any) -> Any:
        """An ``ag2.Agent`` whose every LLM call, tool call, code execution, sub-task and human-input
        request is recorded automatically. ``model`` names a configured model (``default``: the
        configured default, or the offline scripted model when none is configured), or is an ag2
        model config object used as is."""
        return self.agent_factory().agent(name, system_prompt, model=model, tools=tools,
                                         code_execution=code_execution, **kwargs)

    def _new_budget(self, budget: float | None) -> bool:
        if self._agent_factory is None and (budget is None or self._agents is None):
            return False  # nothing to lift (no LLM call made yet), or a context without agents
        # built now if no LLM call was made yet: the budget must hold for the first one too
        return bool(self.agent_factory().set_budget(budget))

    def agent_factory(self) -> Any:
        """The session's agent factory (created on first use; also tracks agents built without it)."""
        if self._agent_factory is None:
            if self._agents is None:
                raise RuntimeError("agents are not available in this context")
            # Threads making their first LLM call at once each built a factory of their own, each with its own
            # tracker and budget: every one started from $0 spent, and eight threads spent eight calls of a budget
            # of two (retest review). Built once, under a lock of its own (building it takes no other lock here).
            with self._factory_lock:
                if self._agent_factory is None:
                    self._agent_factory = self._agents()
        return self._agent_factory

    def role(self, role: str, *, name: str | None = None, model: Any = "default", **kwargs: Any) -> Any:
        """A tracked agent for a role of the agent registry (``labd agents``): its system prompt, model, code
        execution and MCP servers come from the registry — built-in roles, ``[agents.<name>]`` in config,
        ``<home>/agents/*.toml`` — after the session's ``--agent role=other`` overrides."""
        return self.agent_factory().role(role, name=name, model=model, **kwargs)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an async workflow body (ag2 is async) to completion from synchronous workflow code."""
        return asyncio.run(coro)

    # ---- approvals --------------------------------------------------------------------------------
    def approval(self, kind: str, prompt: str, *, options: Iterable[str] = ("approve", "reject", "modify", "redo"),
                 context: Any = None, timeout: float | None = None, policy: str = "reject") -> Decision:
        """Ask a human and wait for the answer (a durable request; see ``labd approvals``).

        ``timeout`` seconds without an answer applies ``policy``: approve, reject, or fail (raises
        :class:`labd.runner.approvals.ApprovalTimeout`). Blocks the calling thread; use
        ``await asyncio.to_thread(ctx.approval, ...)`` from async code.

        Bounded (an approval is never dropped or truncated, so its size is): ``kind`` at most 40 characters,
        ``prompt`` at most 100,000, ``context`` at most 64 KiB as JSON, 1-100 ``options`` of 1-40 characters each
        (:mod:`labd.ipc.events`, ``APPROVAL_*``). A request beyond a bound, or too large for one message to the
        daemon, raises ``ValueError`` at once, naming the bound; put long material in a file and name it.
        """
        if self.approvals is None:
            raise RuntimeError("approvals are not available in this context")
        return self.approvals.request(kind, prompt, options=tuple(options), context=context, timeout=timeout,
                                      policy=policy, node_id=current_node.get(), on_cancel=self.check_cancelled)

    # ---- secrets ----------------------------------------------------------------------------------
    def secret(self, name: str) -> str | None:
        """A secret (e.g. an API key) the daemon withheld from the environment of executed code."""
        return self._secrets.get(name)
