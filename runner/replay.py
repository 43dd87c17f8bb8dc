"""Replay inside a runner: LLM responses and approval answers served from a recorded session.

``labd replay SESSION [--from NODE]`` starts a new session of the same workflow and params whose runner
gets a *seed* (a JSON file the daemon writes beside the work directory before launch; the runner cannot
read the database): for every recorded LLM call, the digest of its canonical request and the recorded
response; for every recorded approval, the digest of what was asked and the answer. Matching is by
content, never by position: a request is served the next unused response recorded for the same digest.

- Every model kind goes through one seam: :class:`labd.runner.agents.hooks.RecordingClient` wraps the LLM
  client of every ag2 turn and asks :func:`active` before calling the model; a served call never reaches it.
- Code execution is not replayed: it runs again (that is what reproduces the files).
- A request with no recorded response is a *miss*: a ``replay.miss`` event (digest, node, agent, and the
  recorded call that was expected next) and a :class:`ReplayMiss` raised in that call — never a guess. With
  ``--from NODE`` the seed holds the calls up to the end of NODE only; once all of them were served, what
  follows goes to the model (live), and a request that matches nothing before that point is a divergence.

The digest (:func:`request_digest`) is computed the same way here (from the live ag2 objects) and in the
daemon (from the stored, blob-inlined ``llm.request``): volatile fields (timestamps, provider response ids,
token usage) are dropped and the recorded session's work directory and id are replaced by placeholders.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from labd.runner.withhold import tail_start

__all__ = ["ReplayMiss", "Replayer", "request_digest", "part_digests", "approval_digest", "activate", "active",
           "VOLATILE", "REQUEST_PARTS"]

#: keys whose values differ between two runs of the same conversation (and never steer the model)
VOLATILE = frozenset({"created_at", "response_id", "usage"})


class ReplayMiss(RuntimeError):
    """A request the recorded session never made (the replayed workflow diverged from the record)."""


def _canon(obj: Any, subst: tuple[tuple[str, str], ...]) -> Any:
    if isinstance(obj, str):
        for old, new in subst:
            if old and old in obj:
                obj = obj.replace(old, new)
        return obj
    if isinstance(obj, dict):
        return {k: _canon(v, subst) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list | tuple):
        return [_canon(v, subst) for v in obj]
    return obj


def _digest(obj: Any, workdir: str | None, session_id: str | None) -> str:
    # longest first: the work directory contains the session id
    subst = tuple((old, new) for old, new in ((workdir or "", "{workdir}"), (session_id or "", "{session}")) if old)
    data = orjson.dumps(_canon(obj, subst), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)
    return hashlib.sha256(data).hexdigest()


def request_digest(request: Mapping[str, Any], *, workdir: str | None = None, session_id: str | None = None) -> str:
    """The digest of a canonical LLM request ``{system, messages, tools, params[, response_schema]}``
    (the ``request`` of an ``llm.request`` event, blobs inlined); ``params`` holds the model name."""
    keys = ("system", "messages", "tools", "params", "response_schema")
    return _digest({k: request.get(k) for k in keys if request.get(k) is not None}, workdir, session_id)


#: the parts of a request a miss compares one by one, to say which of them the replay asks differently
REQUEST_PARTS = ("system", "messages", "tools", "params", "response_schema")


def part_digests(request: Mapping[str, Any], *, workdir: str | None = None,
                 session_id: str | None = None) -> dict[str, str]:
    """A short digest of each part of a canonical LLM request (:data:`REQUEST_PARTS`, the ones it has)."""
    return {k: _digest(request.get(k), workdir, session_id)[:16] for k in REQUEST_PARTS
            if request.get(k) is not None}


def approval_digest(kind: str, prompt: str, options: Any, context: Any, *, workdir: str | None = None,
                    session_id: str | None = None) -> str:
    """The digest of an approval request (what a human was asked)."""
    return _digest({"kind": kind, "prompt": prompt, "options": list(options or ()),
                    "context": json.loads(json.dumps(context, default=repr))}, workdir, session_id)


class Replayer:
    """The seed of one replay session, consumed as the workflow asks."""

    def __init__(self, seed: Mapping[str, Any], emit: Callable[..., int], *, workdir: str = "",
                 session_id: str = "") -> None:
        self.emit = emit
        self.parent = str(seed.get("parent") or "")
        #: this session's own work directory and id: placeholders in the digest, as the parent's are in the seed
        self.workdir = workdir
        self.session_id = session_id
        self.until = seed.get("until")  # the node served up to; None: the whole session
        self._llm: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in (seed.get("llm") or {}).items()}
        self._approvals: dict[str, list[dict[str, Any]]] = {k: list(v) for k, v in
                                                            (seed.get("approvals") or {}).items()}
        #: the recorded calls in order [{digest, node, agent, input}], to name what was expected at a miss
        self._order: list[dict[str, Any]] = list(seed.get("order") or [])
        self._used: set[int] = set()
        #: recorded steps up to the replay point, to report the first step that differs: {position: name} where
        #: the record has positions (node ids jump at a resume and in a branch), else {node id: name}
        by_path = seed.get("step_paths") or {}
        self._by_path = bool(by_path)
        self._steps: dict[str, str] = {str(k): str(v) for k, v in (by_path or seed.get("steps") or {}).items()}
        self._diverged = False
        self._left = sum(len(v) for v in self._llm.values()) + sum(len(v) for v in self._approvals.values())
        self._lock = threading.Lock()
        self.served = 0
        self.misses = 0

    # ---- state -----------------------------------------------------------------------------------
    def _live_now(self) -> bool:
        return self.until is not None and self._left == 0

    @property
    def live(self) -> bool:
        """Past the replay point of a partial replay: requests go to the model (nothing to digest)."""
        with self._lock:
            return self._live_now()

    def _take(self, table: dict[str, list[dict[str, Any]]], digest: str) -> dict[str, Any] | None:
        with self._lock:
            entries = table.get(digest)
            if not entries:
                return None
            self._left -= 1
            self.served += 1
            entry = entries.pop(0)
            index = entry.get("index")
            if isinstance(index, int):
                self._used.add(index)
            return entry

    def _expected(self) -> dict[str, Any] | None:
        with self._lock:
            for i, rec in enumerate(self._order):
                if i not in self._used:
                    return dict(rec)
        return None

    def _miss(self, what: str, digest: str, node: str | None, agent: str | None, text: str,
              parts: dict[str, str] | None = None) -> ReplayMiss:
        with self._lock:
            self.misses += 1
        expected = self._expected()
        payload: dict[str, Any] = {"what": what, "digest": digest, "input": text[tail_start(text, 2000):]}
        if agent:
            payload["agent"] = agent
        if expected:
            recorded = expected.pop("parts", None)
            payload["expected"] = expected
            if parts is not None and isinstance(recorded, dict):  # which parts of the request are not as recorded
                payload["differs"] = [k for k in REQUEST_PARTS if parts.get(k) != recorded.get(k)]
        self.emit("replay.miss", payload, node)
        where = f" in node {node}" if node else ""
        hint = (f"; the record expected next: {expected.get('what', 'llm')} {expected['digest'][:12]} "
                f"in node {expected.get('node')} ({expected.get('agent') or expected.get('kind') or ''})"
                if expected else "; the record has no call left")
        return ReplayMiss(f"replay diverged{where}: this {what} request ({digest[:12]}) was never recorded in "
                          f"session {self.parent}{hint}")

    # ---- steps -----------------------------------------------------------------------------------
    def watch(self, emit: Callable[..., int]) -> Callable[..., int]:
        """``emit`` that also compares each started step with the record: the first step whose name differs
        from the recorded node's (or that the record lacks, in a full replay) gets one ``replay.diverged``
        event. Reported, not fatal: the LLM calls and approvals decide whether the replay can go on."""
        def checked(kind: str, payload: dict[str, Any], node_id: str | None = None, parent: int | None = None,
                    **kw: Any) -> int:
            if kind == "step.started" and not self._diverged and node_id is not None:
                self._check_step(node_id, str(payload.get("name", "")), payload.get("path"))
            return emit(kind, payload, node_id, parent, **kw)
        return checked

    def _check_step(self, node: str, name: str, path: Any = None) -> None:
        if node[:1] == "f":  # a forked child's node: which child runs which task is up to the scheduler
            return
        if self._by_path and not isinstance(path, str):
            return  # a step without a position (a skip): nothing in the record to hold it to
        recorded = self._steps.get(path if self._by_path else node)
        if recorded == name or (recorded is None and self.until is not None):
            return  # the same step; or, after a partial replay's point, anything (it runs live)
        self._diverged = True
        payload: dict[str, Any] = {"name": name}
        if recorded is not None:
            payload["expected"] = recorded
        self.emit("replay.diverged", payload, node)

    # ---- LLM calls -------------------------------------------------------------------------------
    def serve_llm(self, request: Mapping[str, Any], *, node: str | None, agent: str | None) -> dict[str, Any] | None:
        """The recorded response (an ``llm.response`` payload) for ``request``, or None to call the model
        (live, after the replay point). Raises :class:`ReplayMiss` for a request that was never recorded."""
        if self._live_now():
            return None
        digest = request_digest(request, workdir=self.workdir, session_id=self.session_id)
        entry = self._take(self._llm, digest)
        if entry is not None:
            return dict(entry["response"])
        raise self._miss("llm", digest, node, agent, last_input(request),
                         part_digests(request, workdir=self.workdir, session_id=self.session_id))

    # ---- approvals -------------------------------------------------------------------------------
    def serve_approval(self, kind: str, prompt: str, options: Any, context: Any, *,
                       node: str | None) -> dict[str, Any] | None:
        """The recorded answer ``{decision, feedback?, hypothesis?}`` to an approval, or None to ask a human
        (live, after the replay point). Raises :class:`ReplayMiss` for a question that was never asked."""
        if self._live_now():
            return None
        digest = approval_digest(kind, prompt, options, context, workdir=self.workdir,
                                 session_id=self.session_id)
        entry = self._take(self._approvals, digest)
        if entry is None:
            raise self._miss("approval", digest, node, None, prompt)
        answer = {k: entry[k] for k in ("decision", "feedback", "hypothesis") if entry.get(k) is not None}
        self.emit("approval.replayed", {"kind": kind, "prompt": prompt, "digest": digest, **answer}, node)
        return answer


def last_input(request: Mapping[str, Any]) -> str:
    """The text of the last model request in a canonical request (what a miss report shows)."""
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("type") == "ModelRequest":
            return "\n".join(str(p.get("content", "")) for p in message.get("parts") or [] if isinstance(p, dict))
    return ""


async def send_response(payload: Mapping[str, Any], context: Any) -> Any:
    """Serve a recorded response as a model client would: its message goes to the turn's stream first."""
    response = response_from(payload)
    if response.message is not None:
        await context.send(response.message)
    return response


def response_from(payload: Mapping[str, Any]) -> Any:
    """An ag2 ``ModelResponse`` rebuilt from a recorded ``llm.response`` payload."""
    from ag2.events import ModelMessage, ModelResponse, ToolCallEvent, ToolCallsEvent, Usage

    usage = payload.get("usage") or {}
    calls = [ToolCallEvent(str(c.get("name")), id=str(c.get("id")), arguments=str(c.get("arguments") or "{}"))
             for c in payload.get("tool_calls") or ()]
    content = payload.get("content")
    return ModelResponse(ModelMessage(content) if content else None, tool_calls=ToolCallsEvent(calls),
                         usage=Usage(**{k: v for k, v in usage.items() if k in (
                             "prompt_tokens", "completion_tokens", "total_tokens", "cache_read_input_tokens",
                             "cache_creation_input_tokens", "thinking_tokens")}),
                         model=payload.get("model"), provider=payload.get("provider"),
                         finish_reason=payload.get("finish_reason"))


_active: list[Replayer] = []


def activate(seed_text: str, emit: Callable[..., int], *, workdir: str, session_id: str) -> Replayer:
    """Load the seed (the JSON text of the seed file) for this runner, the session ``session_id`` working in
    ``workdir`` (one session per process); :func:`active` returns it."""
    seed = json.loads(seed_text)
    replayer = Replayer(seed, emit, workdir=workdir, session_id=session_id)
    _active[:] = [replayer]
    return replayer


def active() -> Replayer | None:
    """The runner's replayer, if this session is a replay."""
    return _active[0] if _active else None

