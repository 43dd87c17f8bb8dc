"""The Python client SDK: what the ``labd`` CLI uses, and what a GUI or script can use too.

    from labd.ipc import Client
    with Client(home) as c:
        sid = c.start("demo.count", params={"n": 5})
        for ev in c.follow(sid):          # history from the store, then the live tail; no gap, no dup
            print(ev["seq"], ev["kind"], ev["payload"])

A :class:`Client` is synchronous. Threads may share one: their requests take turns on its one connection (a
client per thread lets them run side by side).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from labd.ipc.errors import LabdError, check_timeout
from labd.ipc.follow import still_ended
from labd.ipc.listing import MAX_LIST, Listing
from labd.ipc.live import WIRE_FIELDS, event_from_wire
from labd.ipc.skills import Skills
from labd.ipc.transport import Transport
from labd.ipc.waiting import Waiting

if TYPE_CHECKING:
    from labd.ipc.functions import FunctionCall

__all__ = ["Client", "LabdError", "MAX_LIST", "WIRE_FIELDS", "SEARCH_TYPES", "check_timeout", "event_from_wire",
           "still_ended"]

#: what a search hit can be (``search``'s ``types``): the daemon's index has these and no others
SEARCH_TYPES = ("session", "step", "message", "code", "file", "approval", "result", "error")


class Client(Transport, Waiting, Listing, Skills):
    """A connection to the daemon serving ``home`` (default: ``$LABD_HOME`` or the XDG data dir): the SDK's calls,
    each a request (:meth:`request`, labd.ipc.transport) and the waits built on them (labd.ipc.waiting)."""

    # ---- convenience ------------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self.request("ping")  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self.request("daemon.status")  # type: ignore[no-any-return]

    def workflows(self) -> list[dict[str, Any]]:
        return self.request("workflows.list")["workflows"]  # type: ignore[no-any-return]

    def inspect_workflow(self, workflow: str, params: dict[str, Any] | None = None, *, cwd: str | None = None,
                         pythonpath: list[str] | None = None) -> dict[str, Any]:
        """What :meth:`start` would run (doc, parameters, converted ``params``), resolved as :meth:`start` does."""
        return self.request("workflow.inspect", workflow=workflow, params=params or {},  # type: ignore[no-any-return]
                            **where(cwd, pythonpath))

    def start(self, workflow: str, *, name: str | None = None, params: dict[str, Any] | None = None,
              memory: str | int | None = None, cpu: str | float | None = None,
              timeout: str | float | None = None, budget: float | None = None,
              budget_action: str | None = None, cwd: str | None = None,
              pythonpath: list[str] | None = None, agents: dict[str, str] | None = None,
              procs: int | str | None = None, priority: int | None = None,
              tags: dict[str, str] | None = None, network: bool | None = None,
              placement: dict[str, Any] | None = None, idempotency_key: str | None = None, retries: int = 1,
              policy: list[dict[str, Any]] | None = None, max_output: str | int | None = None) -> str:
        """Start a session; returns its id. Limits accept numbers or strings (``512M``, ``50%``, ``1h``);
        ``budget`` is USD of LLM usage, ``budget_action`` stop (default) or pause; ``tags`` label the session
        for ``sessions(tags=...)`` and ``cost_summary(by="tag")``.

        ``workflow`` (``mymod:fn``, ``./flows.py:fn``) is resolved where the caller stands: against ``cwd``
        and ``pythonpath`` (default: this process's working directory and ``$PYTHONPATH``). ``agents``
        replaces registry roles for this session: ``{"engineer": "my_engineer"}``. ``procs`` caps the
        session's process count (default: the daemon's ``[daemon] procs``, 256; ``"none"``: no limit);
        ``priority`` orders the run queue when the daemon is at ``max_sessions``.
        ``network``: may code the session's agents execute use the network (default: the daemon's
        ``[sandbox] network``). ``policy``: the session's own policy rules (tables as in ``[[policy]]``,
        e.g. from :func:`labd.ipc.policy_rules.load_file`), evaluated after the daemon's. ``max_output`` caps the
        captured stdout+stderr kept (``"10M"``, bytes, or ``"none"``; default: the daemon's ``max_output``);
        past it output is dropped and ``output.truncated`` recorded.
        ``placement``: where it runs -- ``{"on": "ray", "gpus": 1, "resources": {"big_node": 1}}`` puts it in its
        own actor on the daemon's Ray cluster (``cpu`` and ``memory`` are then the actor's request too).

        Every call carries an idempotency key (``idempotency_key``, else a fresh random one) and is retried
        ``retries`` times with the same key when no reply comes in time: the daemon returns the session the
        first attempt started, so a retry never starts a second one."""
        limits = {k: v for k, v in {"memory": memory, "cpu": cpu, "timeout": timeout, "budget": budget,
                                    "budget_action": budget_action, "procs": procs,
                                    "output": max_output}.items() if v is not None}
        body: dict[str, Any] = {"workflow": workflow, "params": params or {}, "limits": limits,
                                **where(cwd, pythonpath)}
        if priority is not None:
            body["priority"] = priority
        if name:
            body["name"] = name
        if agents:
            body["agents"] = agents
        if tags:
            body["tags"] = tags
        if network is not None:
            body["network"] = network
        if policy:
            body["policy"] = policy
        if placement is not None:  # {"on": "ray"|"local", "gpus": n, "resources": {name: amount}}
            body["placement"] = placement
        return self._start(body, idempotency_key, retries)

    def _start(self, body: dict[str, Any], idempotency_key: str | None, retries: int,
               type_: str = "session.start") -> str:
        """Send ``type_`` (a request that starts a session), keyed and retried (:meth:`keyed_request`); returns
        the new session's id."""
        return self.keyed_request(type_, body, idempotency_key, retries)["session"]  # type: ignore[no-any-return]

    def agents(self) -> list[dict[str, Any]]:
        """The agent registry: roles with system prompt, model, code execution, MCP servers and source."""
        return self.request("agents.list")["agents"]  # type: ignore[no-any-return]

    # ---- Python functions as sessions (see labd.ipc.functions) -------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, name: str | None = None, memory: str | int | None = None,
               cpu: str | float | None = None, timeout: str | float | None = None, budget: float | None = None,
               budget_action: str | None = None, max_output: str | int | None = None, **kwargs: Any) -> str:
        """Start a session that runs ``fn(*args, **kwargs)`` (runs your code as you); returns its id.

        ``fn`` and its arguments are pickled here with dill (closures, lambdas, ``__main__`` and notebook
        code included); a part that does not pickle raises :class:`LabdError` ``not_serializable`` naming it,
        a pickle over 1 MiB ``payload_too_large``. The keywords of this method (``name``, limits) are not
        passed on to ``fn``: bind those with ``functools.partial``. Get the value with :meth:`result`.
        """
        from labd.ipc.functions import encode_call

        return self.start_function(encode_call(fn, args, kwargs), name=name, memory=memory, cpu=cpu,
                                   timeout=timeout, budget=budget, budget_action=budget_action,
                                   max_output=max_output)

    def start_function(self, call: FunctionCall, *, name: str | None = None, memory: str | int | None = None,
                       cpu: str | float | None = None, timeout: str | float | None = None,
                       budget: float | None = None, budget_action: str | None = None,
                       max_output: str | int | None = None) -> str:
        """Start a session for an already pickled call (:func:`labd.ipc.functions.encode_call`)."""
        from labd.ipc.functions import FUNCTION_WORKFLOW

        limits = {k: v for k, v in {"memory": memory, "cpu": cpu, "timeout": timeout, "budget": budget,
                                    "budget_action": budget_action, "output": max_output}.items() if v is not None}
        body: dict[str, Any] = {"workflow": FUNCTION_WORKFLOW, "params": call.params, "payload": call.payload,
                                "limits": limits}
        if name:
            body["name"] = name
        return self._start(body, None, 1)

    def cost_summary(self, by: str = "model", since: float | None = None) -> dict[str, Any]:
        """LLM cost across all sessions, grouped ``by`` model | workflow | tag | day | session, calls at or
        after ``since`` (seconds since the epoch)."""
        extra = {} if since is None else {"since": since}
        return self.request("cost.summary", by=by, **extra)  # type: ignore[no-any-return]

    def session(self, ref: str) -> dict[str, Any]:
        return self.request("session.get", session=ref)["session"]  # type: ignore[no-any-return]

    def stop(self, ref: str, grace: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"session": ref}
        if grace is not None:
            body["grace"] = grace
        return self.request("session.stop", **body)  # type: ignore[no-any-return]

    def rm(self, *refs: str, dry_run: bool = False) -> dict[str, Any]:
        """Delete terminal sessions: their whole record and their directories (``session.rm``). ``dry_run``: delete
        nothing, and say which sessions the references name (``sessions``), which of them would be deleted
        (``would_delete``) and which have not ended (``not_ended``: a deletion would be refused)."""
        extra = {"dry_run": True} if dry_run else {}  # sent only when asked: a daemon before it refuses the field
        return self.request("session.rm", sessions=list(refs), **extra)  # type: ignore[no-any-return]

    def prune(self, older_than: str | float, *, status: list[str] | None = None,
              dry_run: bool = False) -> dict[str, Any]:
        """Delete terminal sessions that ended more than ``older_than`` ago ("30d", or seconds)."""
        body: dict[str, Any] = {"older_than": older_than, "dry_run": dry_run}
        if status:
            body["status"] = status
        return self.request("session.prune", **body)  # type: ignore[no-any-return]

    def search(self, query: str, *, types: list[str] | None = None, status: list[str] | None = None,
               workflow: str | None = None, since: str | float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Full-text search over sessions, steps, agent messages, code, files and results (best first). Every word
        of ``query`` must match (as a word or a word's beginning); at most 20 different words, else the daemon
        answers :class:`LabdError` ``bad_request`` (``details.max_words``)."""
        body: dict[str, Any] = {"query": query, "limit": limit}
        for k, v in {"types": types, "status": status, "workflow": workflow, "since": since}.items():
            if v is not None:
                body[k] = v
        return self.request("search", **body)["hits"]  # type: ignore[no-any-return]

    def kill(self, ref: str) -> dict[str, Any]:
        return self.request("session.kill", session=ref)  # type: ignore[no-any-return]

    # ---- agents, approvals, state ------------------------------------------------------------------
    def approvals(self, session: str | None = None, status: str = "pending", *, full: bool = False,
                  after: str | None = None, limit: int | None = None,
                  per_session: int | None = None) -> list[dict[str, Any]]:
        """Approval requests (pending by default), across sessions (at most ``per_session`` of each, 20 unless
        given) or for one (paged: ``after`` an approval id). Prompts are cut to 2,000 characters (``truncated``)
        unless ``full``. The whole reply, with how many more each session has (``omitted``):
        ``request("approvals.list", ...)``."""
        body: dict[str, Any] = {"status": status}
        for k, v in (("session", session or None), ("full", full or None), ("after", after), ("limit", limit),
                     ("per_session", per_session)):
            if v is not None:
                body[k] = v
        return self.request("approvals.list", **body)["approvals"]  # type: ignore[no-any-return]

    def resolve(self, session: str, decision: str, *, feedback: str | None = None, hypothesis: str | None = None,
                approval_id: str | None = None, by: str | None = None,
                refuse_kinds: list[str] | None = None) -> dict[str, Any]:
        """Answer a session's pending approval: approve, reject, modify (with feedback) or redo (hypothesis).
        ``refuse_kinds``: the daemon refuses (``human_required``) if the approval answered is of one of these kinds
        (checked on the approval it answers, so nothing can slip in between)."""
        body: dict[str, Any] = {"session": session, "decision": decision}
        for k, v in {"feedback": feedback, "hypothesis": hypothesis, "approval_id": approval_id, "by": by,
                     "refuse_kinds": refuse_kinds}.items():
            if v is not None:
                body[k] = v
        return self.request("approval.resolve", **body)  # type: ignore[no-any-return]

    def approve(self, session: str, feedback: str | None = None, **kw: Any) -> dict[str, Any]:
        return self.resolve(session, "approve", feedback=feedback, **kw)

    def reject(self, session: str, feedback: str | None = None, **kw: Any) -> dict[str, Any]:
        return self.resolve(session, "reject", feedback=feedback, **kw)

    def modify(self, session: str, feedback: str, **kw: Any) -> dict[str, Any]:
        return self.resolve(session, "modify", feedback=feedback, **kw)

    def redo(self, session: str, hypothesis: str, **kw: Any) -> dict[str, Any]:
        return self.resolve(session, "redo", hypothesis=hypothesis, **kw)

    def pause(self, session: str, reason: str = "pause requested") -> dict[str, Any]:
        return self.request("session.pause", session=session, reason=reason)  # type: ignore[no-any-return]

    def resume(self, session: str, budget: float | None = None, *, limits: dict[str, Any] | None = None,
               reason: str | None = None, stop_wait: float | None = 60.0) -> dict[str, Any]:
        """Resume a paused session (``budget``, USD: continue a budget-paused one with a new budget; a running
        session's pause not yet reached is cancelled: both answer ``{"resuming": True, "status": ...}``), or
        continue an ended one (failed, lost, cancelled, budget-stopped) with a new runner from its last
        completed step; ``limits`` (memory, cpu, timeout, budget, procs) then replace the session's. A session
        being stopped (``kill`` then ``resume`` at once) is waited for to end, then continued: for at most
        ``stop_wait`` seconds (None: no limit; a stop's grace can be long), after which :class:`LabdError`
        ``stopping`` is raised and nothing was resumed."""
        extra: dict[str, Any] = {} if budget is None else {"budget": budget}
        if limits:
            extra["limits"] = limits
        if reason:
            extra["reason"] = reason
        try:
            return self.request("session.resume", session=session, **extra)  # type: ignore[no-any-return]
        except LabdError as exc:
            if exc.code != "stopping":
                raise
        try:
            self.wait(session, timeout=stop_wait)
        except LabdError as exc:
            if exc.code != "timeout":
                raise
            raise LabdError("stopping", f"session {session} is still being stopped after {stop_wait:g} s; resume it "
                                        "once it has ended") from None
        return self.request("session.resume", session=session, **extra)  # type: ignore[no-any-return]

    def branch(self, session: str, from_node: str, *, hypothesis: str | None = None,
               instructions: str | None = None, params: dict[str, Any] | None = None, count: int = 1,
               limits: dict[str, Any] | None = None, idempotency_key: str | None = None,
               retries: int = 1) -> dict[str, Any]:
        """Start ``count`` new sessions from ``session``'s record up to node ``from_node`` (an id or step name):
        the steps completed before it are reused, the work directory is as it was, the hypothesis and
        instructions reach the agents of the steps that run again. ``{"sessions": [{session, name}], ...}``.

        Carries an idempotency key (``idempotency_key``, else a fresh random one) and is retried ``retries`` times
        with it when no reply comes in time: the daemon answers a retry with the sessions the first attempt made
        (``replayed: true``), so a lost reply never makes a second set of branches."""
        body: dict[str, Any] = {"session": session, "from": from_node, "count": count}
        for key, value in (("hypothesis", hypothesis), ("instructions", instructions), ("params", params),
                           ("limits", limits)):
            if value:
                body[key] = value
        return self.keyed_request("session.branch", body, idempotency_key, retries)  # type: ignore[no-any-return]

    def checkpoints(self, session: str) -> list[dict[str, Any]]:
        """The checkpoints a session recorded (one per completed step), in record order."""
        return self.request("session.checkpoints", session=session)["checkpoints"]  # type: ignore[no-any-return]

    def dag(self, session: str, fmt: str = "json", *, newest: int | None = None) -> dict[str, Any]:
        """A session's step graph (``fmt`` json: the reply's ``dag``; mermaid or dot: its ``text``). ``newest``:
        only the newest that many nodes and the edges between them (the reply's ``nodes_omitted``: how many not)."""
        body: dict[str, Any] = {"session": session, "format": fmt}
        if newest is not None:
            body["newest"] = newest
        return self.request("session.dag", **body)  # type: ignore[no-any-return]

    def replay(self, session: str, *, from_node: str | None = None, name: str | None = None,
               idempotency_key: str | None = None, retries: int = 1) -> str:
        """Replay a finished session: a new session (``origin`` replay, ``parent_id`` the session) re-runs its
        workflow with its params, every LLM response and approval answer served from the record (up to the
        end of node ``from_node``, then live); code runs again. Returns the new session's id."""
        body: dict[str, Any] = {"session": session}
        if from_node:
            body["from"] = from_node
        if name:
            body["name"] = name
        return self._start(body, idempotency_key, retries, "session.replay")

    def compare(self, *sessions: str) -> dict[str, Any]:
        """Sessions side by side (the first is the baseline): steps, files, totals, final results."""
        return self.request("sessions.compare", sessions=list(sessions))  # type: ignore[no-any-return]

    def tree(self, session: str) -> dict[str, Any]:
        """A session's family (root ancestor and all descendants: branches, replays, skill runs) as a tree."""
        return self.request("sessions.tree", session=session)  # type: ignore[no-any-return]

    def cost(self, session: str, *, calls: bool = True) -> dict[str, Any]:
        """A session's LLM cost: total, by agent, model, node and step, and (``calls``) every call."""
        body: dict[str, Any] = {"session": session, **({} if calls else {"calls": False})}
        return self.request("session.cost", **body)  # type: ignore[no-any-return]

    def files(self, session: str, since: int = 0) -> list[dict[str, Any]]:
        """The history of a session's files, in seq order (``since``: only rows recorded after that seq)."""
        body: dict[str, Any] = {"session": session, **({"since": since} if since else {})}
        return self.request("session.files", **body)["files"]  # type: ignore[no-any-return]

    def state_history(self, session: str) -> list[dict[str, Any]]:
        return self.request("session.history", session=session)["history"]  # type: ignore[no-any-return]

    def events(self, ref: str, since: int = 0, limit: int = 5000, kinds: list[str] | None = None, *,
               full: bool = False, node: str | None = None, agent: str | None = None,
               max_bytes: int | None = None) -> dict[str, Any]:
        """A page of events. ``full``: blob references replaced by their texts (complete LLM requests and
        responses); ``node``: only that node and the nodes nested in it; ``agent``: only that agent's; ``max_bytes``:
        a page of about that many bytes at most (the daemon's default: 8 MiB; always at least one event)."""
        body: dict[str, Any] = {"session": ref, "since": since, "limit": limit}
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        if kinds:
            body["kinds"] = kinds
        if full:
            body["full"] = True
        if node:
            body["node"] = node
        if agent:
            body["agent"] = agent
        return self.request("events.query", **body)  # type: ignore[no-any-return]

    def history(self, ref: str, since: int = 0, kinds: list[str] | None = None, *, full: bool = False,
                node: str | None = None, agent: str | None = None) -> Iterator[dict[str, Any]]:
        """Every stored event after ``since``, page by page (filters as in :meth:`events`)."""
        while True:
            page = self.events(ref, since=since, kinds=kinds, full=full, node=node, agent=agent)
            yield from page["events"]
            if not page["more"]:
                return
            since = page["events"][-1]["seq"]

def where(cwd: str | None = None, pythonpath: list[str] | None = None) -> dict[str, Any]:
    """The ``cwd`` and ``pythonpath`` fields of a request: absolute paths, by default this process's."""
    try:
        base = os.path.abspath(cwd or os.getcwd())
    except FileNotFoundError:  # our working directory was removed: resolve against labd's path only
        return {}
    if pythonpath is None:
        pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"cwd": base, "pythonpath": [os.path.join(base, os.path.expanduser(p)) for p in pythonpath]}
