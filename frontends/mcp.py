"""`labd mcp`: an MCP server (stdio) that lets desktop agents and editors drive labd.

Built on the official MCP Python SDK (``mcp.server.mcpserver.MCPServer``). It is a client of the public
protocol like every front-end: each tool call opens a :class:`labd.ipc.Client` to the daemon of the home
(in a worker thread, so the server's event loop never blocks on the daemon), and returns at once — starting
a session answers with its id, and the caller polls ``read_output`` / ``get_session`` (MCP tools should not
hold a call open for the hours a session may run). Errors from the daemon become MCP tool errors carrying
labd's stable code, e.g. ``labd: no session 'x' [not_found]``.

Only protocol frames go to stdout (the stdio transport owns it, see :mod:`labd.frontends.mcp_stdio`); nothing here
prints.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import ConfigDict

from labd import __version__
from labd.frontends.mcp_stdio import guarded_stdio_server
from labd.ipc.client import Client, LabdError
from labd.ipc.events import SCHEMAS
from labd.ipc.safe_files import listed_name, open_beneath, path_bytes

__all__ = ["build_server", "run"]

T = TypeVar("T")
OUTPUT_KINDS = ["output"]
MAX_TEXT = 200_000  # characters of output returned by one read_output call (page with `since`)
#: characters of events (as JSON) returned by one read_events call (page with `since`); the reply goes to a model
MAX_EVENTS_JSON = 200_000
#: characters kept (the start of its payload's JSON) of one event larger than a whole read_events call
EVENT_HEAD = 2_000
#: characters (as JSON) of any other tool's result: a larger one is a tool error saying where to read it instead
MAX_RESULT = 1_000_000
#: nodes and state transitions get_session returns (the newest; get_dag and read_events have more)
SESSION_STEPS = 200
#: get_dag answers the newest this many nodes unless asked for more: a days-long session's whole graph (~400 bytes a
#: node in JSON) would fill an agent's context many times over
DAG_NEWEST = 500
MAX_FILE = 1_000_000  # bytes of a file returned as a resource
#: events read_events / read_output ask the daemon for first; each later request asks for about as many as the size
#: budget left holds at the average size seen so far (a daemon page may be 5000 events and 8 MiB: fetched whole to
#: return 200,000 characters, it cost this process and the daemon 40 times what the model got)
FIRST_PAGE = 20
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def build_server(home: str | os.PathLike[str] | None = None, *, allow_policy_approvals: bool = False) -> MCPServer:
    """The MCP server for the daemon of ``home`` (default: ``$LABD_HOME`` or the XDG data dir).

    An approval that a ``[[policy]]`` rule asked for (kind ``policy``: "a human must approve every program an
    agent runs") is refused through MCP unless ``allow_policy_approvals``: the MCP client is itself a model, and
    the rule exists so that no model approves its peers' actions. Workflow approvals (``hitl`` checkpoints and the
    like) can be answered."""
    server: MCPServer = MCPServer(
        "labd", version=__version__,
        instructions=("labd runs AI research sessions, each in its own process, and records everything they do. "
                      "Start one with start_session, then poll get_session / read_output with the returned id; "
                      "answer pending approvals with answer_approval."))

    async def call(fn: Callable[[Client], T], *, bounded: bool = True) -> T:
        """``fn`` on a client, in a worker thread; a tool's result (``bounded``) at most :data:`MAX_RESULT`."""
        def run_sync() -> T:
            try:
                with Client(home) as c:
                    result = fn(c)
                    return _bounded(result) if bounded else result
            except LabdError as exc:
                raise ToolError(f"labd: {exc.message} [{exc.code}]") from None
        return await anyio.to_thread.run_sync(run_sync)

    @server.tool(annotations=READ_ONLY)
    async def list_workflows() -> list[dict[str, Any]]:
        """Workflows this daemon can run (built-ins), with their parameters."""
        return await call(lambda c: c.workflows())

    @server.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=True))
    async def start_session(workflow: str, params: dict[str, Any] | None = None, name: str | None = None,
                            memory: str | None = None, cpu: str | None = None, timeout: str | None = None,
                            budget: float | None = None) -> dict[str, Any]:
        """Start a session and return its id at once (poll get_session / read_output).

        workflow: a built-in name (see list_workflows) or 'package.module:function'.
        memory like '512M', cpu like '50%' of one core, timeout like '1h30m' or '90s', budget in USD."""
        def start(c: Client) -> dict[str, Any]:
            sid = c.start(workflow, name=name, params=params or {}, memory=memory, cpu=cpu, timeout=timeout,
                          budget=budget)
            row = c.session(sid)
            return {"session": sid, "name": row["name"], "status": row["status"]}
        return await call(start)

    @server.tool(annotations=READ_ONLY)
    async def list_sessions(status: list[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Sessions, newest first: id, name, workflow, status, reason, cost, created_at, ended_at."""
        rows = await call(lambda c: c.sessions(status=status, limit=limit))
        keep = ("id", "name", "workflow", "status", "reason", "cost", "created_at", "ended_at", "last_seq")
        return [{k: r.get(k) for k in keep} for r in rows]

    @server.tool(annotations=READ_ONLY)
    async def get_session(session: str) -> dict[str, Any]:
        """One session: status, reason, limits, peaks, cost, its newest 200 steps and state transitions
        (``steps_omitted`` / ``history_omitted``: how many older ones get_dag and read_events have)."""
        return await call(lambda c: c.request("session.get", session=session, steps_limit=SESSION_STEPS)["session"])

    @server.tool(annotations=READ_ONLY)
    async def read_output(session: str, since: int = 0) -> dict[str, Any]:
        """The session's printed output after event seq `since` (0: from the start), as text.

        Returns {text, next_since, status, more}: call again with since=next_since for what follows. At most
        200,000 characters a call; a single piece of output longer than that is cut, and `cut` says so: {seq,
        chars} (the characters of event `seq` not returned; `labd logs` prints them)."""
        def read(c: Client) -> dict[str, Any]:
            events, last_page = _read_within(c, session, since, OUTPUT_KINDS, 5000, MAX_TEXT,
                                             lambda ev: len(ev["payload"].get("text", "")))
            status, more = last_page["status"], last_page["more"]
            parts: list[str] = []
            last, size = since, 0
            for i, ev in enumerate(events):
                text = ev["payload"].get("text", "")
                if size + len(text) > MAX_TEXT and parts:
                    return {"text": "".join(parts), "next_since": last, "status": status, "more": True}
                if len(text) > MAX_TEXT:  # one piece larger than a whole call: its start, and what was left out
                    return {"text": text[:MAX_TEXT], "next_since": ev["seq"], "status": status,
                            "more": more or i + 1 < len(events),
                            "cut": {"seq": ev["seq"], "chars": len(text) - MAX_TEXT}}
                parts.append(text)
                size += len(text)
                last = ev["seq"]
            if not events and not more:
                last = max(since, c.session(session)["last_seq"])  # skip past non-output events
            return {"text": "".join(parts), "next_since": last, "status": status, "more": more}
        return await call(read)

    @server.tool(annotations=READ_ONLY)
    async def read_events(session: str, since: int = 0, limit: int = 200,
                          kinds: list[str] | None = None) -> dict[str, Any]:
        """Recorded events after seq `since` (agent turns, LLM calls, tool calls, files, approvals...).

        At most about 200,000 characters of events a call (`more`: call again with since = the last seq). An event
        larger than that alone comes with `payload` null and `payload_cut`: {chars, head} (the size of its payload
        as JSON, and its first 2,000 characters; `labd events SESSION --json` prints it whole). `kinds`: event kinds
        or their starts, as `labd events --kind` takes them ('llm': llm.request and llm.response; 'session.ended')."""
        wanted = _event_kinds(kinds)

        def read(c: Client) -> dict[str, Any]:
            events, last_page = _read_within(c, session, since, wanted, max(1, min(limit, 5000)), MAX_EVENTS_JSON,
                                             _json_chars)
            return {**last_page, **_fit_events(events, last_page["more"])}
        return await call(read)

    @server.tool(annotations=READ_ONLY)
    async def get_dag(session: str, format: str = "json", newest: int = DAG_NEWEST) -> dict[str, Any]:
        """The session's step graph: json (nodes and edges), mermaid or dot; only its newest `newest` nodes (1 to
        100000) and the edges between them, `nodes_omitted` saying how many older ones were left out."""
        return await call(lambda c: c.dag(session, fmt=format, newest=newest))

    @server.tool(annotations=READ_ONLY)
    async def get_cost(session: str) -> dict[str, Any]:
        """LLM cost and tokens of a session: total, by agent, by model, by node."""
        return await call(lambda c: c.cost(session, calls=False))  # every call is in read_events: the sums only

    @server.tool(annotations=READ_ONLY)
    async def list_approvals(session: str | None = None) -> list[dict[str, Any]]:
        """Approval requests waiting for a human (across sessions: the oldest 20 of each; or of one session).
        Prompts are cut to 2,000 characters (`truncated`); `more_pending`: how many more that session has."""
        def listed(c: Client) -> list[dict[str, Any]]:
            reply = c.request("approvals.list", **({"session": session} if session else {}))
            more = reply.get("omitted") or {}
            return [{**a, "more_pending": more[a["session_id"]]} if more.get(a["session_id"]) else a
                    for a in reply["approvals"]]
        return await call(listed)

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False))
    async def answer_approval(session: str, decision: str, feedback: str | None = None,
                              hypothesis: str | None = None, approval_id: str | None = None) -> dict[str, Any]:
        """Answer a pending approval: decision is one of its options (approve, reject, modify, redo, ...).
        Approvals that a policy rule requires of a human are refused here."""
        def answer(c: Client) -> dict[str, Any]:
            if not allow_policy_approvals:
                meant = [a for a in c.approvals(session=session) if approval_id in (None, a.get("id"))]
                for a in meant:
                    if a.get("kind") == "policy":
                        rule = (a.get("context") or {}).get("policy_rule", "?")
                        raise LabdError("human_required", f"approval {a.get('id')} was asked for by policy rule "
                                        f"{rule!r}, which requires a human: answer it with `labd approve` / "
                                        f"`labd reject`, `labd top` or `labd ui` (or start `labd mcp "
                                        f"--allow-policy-approvals`)")
            # the check above names the rule; this one is what holds: the daemon refuses a policy approval on the
            # very approval it answers, so one asked for after the check cannot be answered here either
            return c.resolve(session, decision, feedback=feedback, hypothesis=hypothesis, approval_id=approval_id,
                             by="mcp", refuse_kinds=None if allow_policy_approvals else ["policy"])
        return await call(answer)

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    async def stop_session(session: str) -> dict[str, Any]:
        """Stop a session: asked politely, then SIGTERM, then SIGKILL."""
        return await call(lambda c: c.stop(session))

    @server.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True))
    async def pause_session(session: str) -> dict[str, Any]:
        """Pause a session at its next step boundary."""
        return await call(lambda c: c.pause(session))

    @server.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True))
    async def resume_session(session: str) -> dict[str, Any]:
        """Resume a paused session."""
        return await call(lambda c: c.resume(session))

    @server.resource("labd://sessions/{session}/files", mime_type="application/json")
    async def session_files(session: str) -> str:
        """The files a session wrote: path, size, sha256, the step and agent that wrote them, ``restored`` (put in
        place by a resume's or branch's restore of a checkpoint, not by a step), ``path_b64`` (a name that is not
        UTF-8: its bytes; ``path`` is then its display form), and the ``uri`` to read each by."""
        try:
            files = await call(lambda c: c.files(session), bounded=False)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None
        keys = ("path", "path_b64", "size", "sha256", "kind", "step", "agent", "change", "restored")
        return json.dumps([{k: f.get(k) for k in keys} | {"uri": _file_uri(session, f)} for f in files])

    @server.resource("labd://sessions/{session}/file/{+path}")
    async def session_file(session: str, path: str) -> str | bytes:
        """One file of a session's work directory (only files the record lists; text or bytes)."""
        return await _read_file(session, path, None)

    @server.resource("labd://sessions/{session}/file-bytes/{name}")
    async def session_file_bytes(session: str, name: str) -> str | bytes:
        """One file of a session's work directory whose name is not UTF-8, named by its bytes (URL-safe base64;
        the files listing gives each such file's ``uri``)."""
        try:
            raw = base64.urlsafe_b64decode(name.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ResourceError(f"not a file name in URL-safe base64: {name[:60]!r}") from None
        return await _read_file(session, raw.decode("utf-8", "backslashreplace"),
                                base64.b64encode(raw).decode("ascii"))

    async def _read_file(session: str, path: str, path_b64: str | None) -> str | bytes:
        def read(c: Client) -> str | bytes:
            reply = c.request("session.files", session=session)
            exact = listed_name(reply["files"], path, path_b64)
            if exact is None:
                raise ResourceError(f"session {session} has no file {path!r}")
            try:  # opened without following symlinks: nothing the session swaps in can lead outside its workdir
                with open_beneath(Path(reply["workdir"]), exact) as f:
                    data = f.read(MAX_FILE)
            except OSError:
                raise ResourceError(f"file {path!r} is not in the work directory any more") from None
            try:
                return data.decode()
            except UnicodeDecodeError:
                return data
        try:
            return await call(read, bounded=False)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    _refuse_unknown_arguments(server)
    return server


def _file_uri(session: str, f: dict[str, Any]) -> str:
    """The resource URI a listed file is read by: its path percent-encoded (a resource URI's path is decoded when it
    is read, so ``q?.txt`` or ``x%41.txt`` written as they are would name another file, or none), or, for a name
    that is not UTF-8, its bytes (its path is a display form, which a file really named so shares)."""
    where = f"labd://sessions/{quote(session, safe='')}"
    if f.get("path_b64"):
        raw = path_bytes(f["path_b64"]) or b""  # a damaged record's: a URI that reads nothing
        return f"{where}/file-bytes/{base64.urlsafe_b64encode(raw).decode('ascii')}"
    return f"{where}/file/{quote(f['path'], safe='/')}"


def _refuse_unknown_arguments(server: MCPServer) -> None:
    """Make every tool refuse an argument it does not take (a tool error naming it, ``extra_forbidden``), and say so
    in its input schema (``additionalProperties: false``). The SDK ignores unknown arguments: ``start_session`` with
    ``memroy="256M"`` started a session with no memory limit and answered as if the limit had been set."""
    for tool in server._tool_manager.list_tools():  # the SDK has no public hook for the argument model
        loose = tool.fn_metadata.arg_model
        strict: type[Any] = type(loose.__name__, (loose,), {"__module__": loose.__module__,
                                                            "model_config": ConfigDict(**loose.model_config,
                                                                                       extra="forbid")})
        tool.fn_metadata.arg_model = strict
        tool.parameters = strict.model_json_schema(by_alias=True)


def _json_chars(value: Any) -> int:
    return len(json.dumps(value, default=str))


def _event_kinds(asked: list[str] | None) -> list[str] | None:
    """The event kinds read_events asks the daemon for: each of ``asked`` a kind, or the start of kinds (as
    ``labd events --kind`` takes it). One that names no kind is a tool error listing them: the daemon matches kinds
    exactly, and an empty answer to ``llm`` or a misspelt kind would read as "no such events happened"."""
    if not asked:
        return None
    out: list[str] = []
    for k in asked:
        matched = [k] if k in SCHEMAS else [kind for kind in SCHEMAS if kind.startswith(k)]
        if not matched:
            raise ToolError(f"labd: no event kind {k!r} (nor any starting so); the kinds: "
                            f"{', '.join(sorted(SCHEMAS))} [bad_request]")
        out += [m for m in matched if m not in out]
    return out


def _read_within(c: Client, session: str, since: int, kinds: list[str] | None, most: int, budget: int,
                 size: Callable[[dict[str, Any]], int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(events, last page)``: at most ``most`` events after ``since``, read until their ``size`` passes ``budget``
    (the event that passes it included: the caller cuts there) or none are left, and the daemon's last page (its
    ``session``, ``status``, ``more``). Asked for in pages sized to the budget, so what is read is about what is
    returned, not a whole daemon page: at most the bytes the budget has left (``max_bytes``; the daemon counts a
    payload's JSON + 100 bytes an event), and a count the daemon reads from its store (:data:`FIRST_PAGE`, then as
    many as the budget left holds at the average size so far). One event larger than the budget is still read
    whole: the daemon cannot cut one."""
    events: list[dict[str, Any]] = []
    used, ask = 0, min(most, FIRST_PAGE)
    while True:
        page = c.events(session, since=since, limit=ask, kinds=kinds, max_bytes=max(1, budget - used))
        events += page["events"]
        used += sum(size(ev) for ev in page["events"])
        if not page["events"] or not page["more"] or used > budget or len(events) >= most:
            return events, page
        session, since = page["session"], page["events"][-1]["seq"]  # the id: a name could come to mean another
        ask = max(1, min(most - len(events), (budget - used) // max(1, used // len(events)) + 1))


def _fit_events(events: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """``{events, more}``: the first of ``events`` that fit in :data:`MAX_EVENTS_JSON` characters of JSON (at least
    one; an event larger than that alone has its payload replaced by ``payload_cut``: its size and start)."""
    kept: list[dict[str, Any]] = []
    size = 0
    for ev in events:
        n = _json_chars(ev)
        if size + n > MAX_EVENTS_JSON and kept:
            return {"events": kept, "more": True}
        if n > MAX_EVENTS_JSON:
            payload = json.dumps(ev.get("payload"), default=str)
            ev = {**ev, "payload": None, "payload_cut": {"chars": len(payload), "head": payload[:EVENT_HEAD]}}
            n = _json_chars(ev)
        kept.append(ev)
        size += n
    return {"events": kept, "more": more}


def _bounded(result: T) -> T:
    """``result``, if its JSON is at most :data:`MAX_RESULT` characters; else a tool error (a reply that size would
    flood the model that called the tool)."""
    n = _json_chars(result)
    if n > MAX_RESULT:
        raise ToolError(f"labd: the result is {n:,} characters of JSON, more than the {MAX_RESULT:,} this server "
                        "returns in one call; read it with the labd CLI (its --json output) instead [result_too_large]")
    return result


def run(home: str | os.PathLike[str] | None = None, *, allow_policy_approvals: bool = False) -> int:
    """Serve MCP over stdio until the client closes the stream.

    As ``MCPServer.run("stdio")`` does, but over :func:`~labd.frontends.mcp_stdio.guarded_stdio_server`: a line the
    SDK's parser would drop unanswered (too deep, too large, not JSON) gets a JSON-RPC error reply instead."""
    # The SDK's own in-memory client reaches the low-level server the same way (a TODO there makes it public).
    lowlevel = build_server(home, allow_policy_approvals=allow_policy_approvals)._lowlevel_server

    async def serve() -> None:
        async with guarded_stdio_server() as (read_stream, write_stream):
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    anyio.run(serve)
    return 0
