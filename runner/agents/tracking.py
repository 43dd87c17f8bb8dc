"""Automatic tracking of ag2 agents: a middleware that turns agent activity into events.

Every agent built through the runner's context gets :class:`TrackingMiddleware` (ag2 creates one per
turn). Workflow code contains no tracking code. Per turn:

    agent.turn.started (a DAG sub-node under the current step) ->
      llm.request -> llm.response (+ agent.message, cost.recorded) ->
      tool.call -> [code.execution] -> tool.result (+ file.created / file.changed) -> ...
    agent.turn.finished

``parent`` links a response to its request and a result to its call (producer-side ``src_seq``).

Sub-agents are recorded from the tool call that runs them (``task_<agent>`` from ``Agent.as_tool``,
``run_subtask(s)`` from ``TaskConfig``) as ``subagent.started`` / ``subagent.finished``; the child's own
turns nest under the delegating agent's node. (An ag2 observer for ``TaskStarted`` would see the same,
but ag2 rebuilds every observer's call model on every turn: ~0.7 ms per turn, docs/benchmarks.md.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ag2.events import BaseEvent, ModelRequest, ToolErrorEvent, ToolNotFoundEvent, ToolResultsEvent
from ag2.middleware import BaseMiddleware

from labd.runner.agents.budget import Budget
from labd.runner.agents.code import CODE_TOOL
from labd.runner.agents.context import current_agent, current_call, current_model
from labd.runner.agents.fidelity import BlobSender, jsonable, model_params
from labd.runner.agents.hooks import LLMCall, current_llm_call
from labd.runner.agents.nesting import enclosing_call
from labd.runner.agents.policy import PolicyGate, refused_response, refused_tool_result
from labd.runner.agents.pricing import PriceTable
from labd.runner.context import clip, current_node
from labd.runner.files import FileTracker
from labd.runner.withhold import text_withholder

__all__ = ["Tracker", "TrackingMiddleware"]

MAX_TEXT = 4000
SUBTASK_TOOLS = ("run_subtask", "run_subtasks")
#: where ag2's network puts the channel of a turn in ``context.dependencies`` (ag2.network.policies.CHANNEL_DEP;
#: a literal so that tracking does not import ag2.network)
CHANNEL_DEP = "ag2.network.channel"


def _event_text(event: BaseEvent) -> str:
    if isinstance(event, ModelRequest):
        return "\n".join(str(getattr(p, "content", "")) for p in event.parts)
    if isinstance(event, ToolResultsEvent):
        return "\n".join(_result_text(r) for r in event.results)
    return str(getattr(event, "content", "") or "")


def _result_text(res: Any) -> str:
    result = getattr(res, "result", None)
    parts = getattr(result, "parts", None) or []
    return "\n".join(str(getattr(p, "content", p)) for p in parts)


class Tracker:
    """Per-session state shared by all tracked agents."""

    def __init__(self, emit: Callable[..., int], new_node_id: Callable[[], str], prices: PriceTable,
                 files: FileTracker, describe: Callable[[Any], tuple[str, str, bool]] | None = None,
                 secrets: Mapping[str, str] | None = None) -> None:
        self.emit = emit
        self.new_node_id = new_node_id
        self.prices = prices
        self.files = files
        self.blobs = BlobSender(withhold=text_withholder(secrets or {}))
        #: USD priced so far by this runner (the budget is checked against it before each call)
        self.spent = 0.0
        self.spent_by: dict[str, float] = {}  # ... and per agent (policies can cap an agent's cost)
        self.longest_answer = 0  # completion tokens of the longest answer so far (a budget's estimate of a call)
        self.budget: Budget | None = None
        self.policy: PolicyGate | None = None  # the session's [[policy]] rules, when it has any
        self._describe = describe
        self._lock = threading.Lock()
        #: ag2 network channel id -> (agent, its turn node, routing tool, reason) of the last turn in it
        self._last_speaker: dict[str, tuple[str, str, str | None, str | None]] = {}
        self._param_cache: dict[int, tuple[Any, dict[str, Any]]] = {}

    def emit_full(self, kind: str, payload: dict[str, Any], node: str | None, parent: int | None = None) -> int:
        """Emit with long strings moved to blobs (never truncated; each blob sent once per session)."""
        payload, new = self.blobs.externalize(payload)
        if new:
            payload["blobs"] = new
        return self.emit(kind, payload, node, parent)

    def middleware(self, agent: str, model: str, provider: str, offline: bool) -> Callable[..., BaseMiddleware]:
        # what every event of this agent's turns repeats, built once per agent (ag2 calls the factory per turn)
        base = {"agent": agent, "model": model, "provider": provider, "offline": offline}

        def factory(event: BaseEvent, context: Any) -> BaseMiddleware:
            return TrackingMiddleware(event, context, tracker=self, agent=agent, model=model, provider=provider,
                                      offline=offline, base=base)
        factory._labd_tracking = True  # type: ignore[attr-defined]
        return factory

    def tracker_for(self, agent: Any) -> Callable[..., BaseMiddleware]:
        """The tracking middleware for an agent built without ``ctx.agent`` (model read from its config)."""
        cached = agent.__dict__.get("_labd_middleware")
        if cached is None:
            model, provider, offline = (self._describe(agent.config) if self._describe
                                        else ("unknown", "ag2", False))
            cached = agent.__dict__["_labd_middleware"] = self.middleware(agent.name, model, provider, offline)
        return cached  # type: ignore[no-any-return]

    # ---- LLM calls (called by hooks.RecordingClient, innermost, right before the model is called) ----
    async def before_llm_call(self, call: LLMCall, messages: Any = (), context: Any = None) -> None:
        """Budget check before the call: the session spends at most its budget plus one call (calls at the same
        time included: runner/agents/budget.py)."""
        if call.budgeted is not None:  # the same call again (a retry inside it): admitted once, counted once
            call.budgeted.priced(0.0, real=False, reserved=call.reserved)
            call.budgeted = None
        budget = self.budget
        if budget is not None:
            call.reserved = await budget.check(lambda: self.spent, call, self._estimate(call, messages, context))
            call.budgeted = budget

    def _estimate(self, call: LLMCall, messages: Any, context: Any) -> float:
        """What a call may cost, before it is made: its request's text at ~4 characters a token, and an answer as
        long as the longest so far, at the model's price (only sessions with a budget, or a policy rule on costs, pay
        for this)."""
        try:
            chars = sum(len(str(part)) for part in getattr(context, "prompt", None) or ())
            for event in messages or ():
                chars += len(_event_text(event))
            price = self.prices.price(str(call.base.get("model") or ""))
            return price.cost(chars // 4 + 1, self.longest_answer)
        except Exception:  # noqa: BLE001 - an estimate must never fail the call: the dearest call so far stands in
            return 0.0

    def record_request(self, call: LLMCall, messages: Any, context: Any, tools: Any, response_schema: Any) -> int:
        new: dict[str, str] = {}
        blobs = self.blobs
        threshold = blobs.threshold
        # the common values inline (this runs for every LLM call); the general ones in one pass each,
        # serialised and with long texts moved to blobs together (BlobSender.serialize)
        system = []
        for part in getattr(context, "prompt", None) or ():
            text = str(part)
            system.append(text if len(text) < threshold else blobs.serialize(text, new))
        request: dict[str, Any] = {
            "system": system,
            "messages": blobs.serialize_messages(messages, new),  # each message serialised once
            "tools": blobs.serialize(list(tools), new) if tools else [],
            "params": self._params(call.config),
        }
        if response_schema is not None:
            request["response_schema"] = blobs.serialize(response_schema, new)
        last_input = next((_event_text(e) for e in reversed(messages) if isinstance(e, ModelRequest)), "")
        payload: dict[str, Any] = {**call.base, "messages": len(messages),
                                   "input": last_input if len(last_input) < threshold
                                   else blobs.serialize(last_input, new),
                                   "request": request}
        if new:
            payload["blobs"] = new
        return self.emit("llm.request", payload, call.node)

    def full_request(self, call: LLMCall, messages: Any, context: Any, tools: Any,
                     response_schema: Any) -> dict[str, Any]:
        """The request as :meth:`record_request` records it, with no text moved to blobs (labd replay
        digests it; only replay sessions pay for this second serialisation)."""
        request: dict[str, Any] = {"system": [str(p) for p in (getattr(context, "prompt", None) or [])],
                                   "messages": jsonable(messages), "tools": jsonable(list(tools or ())),
                                   "params": self._params(call.config)}
        if response_schema is not None:
            request["response_schema"] = jsonable(response_schema)
        return request

    def _params(self, config: Any) -> dict[str, Any]:
        key = id(config)
        cached = self._param_cache.get(key)
        if cached is None or cached[0] is not config:
            cached = self._param_cache[key] = (config, model_params(config))
        return dict(cached[1])

    def add_cost(self, cost: float, agent: str | None = None) -> None:
        with self._lock:
            self.spent += cost
            if agent is not None:
                self.spent_by[agent] = self.spent_by.get(agent, 0.0) + cost

    def costs(self, agent: str | None) -> tuple[float, float]:
        """(USD ``agent`` spent so far, USD the session spent so far) in this runner."""
        with self._lock:
            return self.spent_by.get(agent or "", 0.0), self.spent

    # ---- handoffs in ag2 networks (group chats, swarms) --------------------------------------------
    def handoff_from(self, channel: str, agent: str) -> tuple[str, str, str | None, str | None] | None:
        with self._lock:
            last = self._last_speaker.get(channel)
        return last if last is not None and last[0] != agent else None

    def spoke(self, channel: str, agent: str, node: str, tool: str | None, reason: str | None) -> None:
        with self._lock:
            self._last_speaker[channel] = (agent, node, tool, reason)


class TrackingMiddleware(BaseMiddleware):
    """Records one agent turn, its LLM calls and tool executions (created by ag2 once per turn)."""

    def __init__(self, event: BaseEvent, context: Any, *, tracker: Tracker, agent: str, model: str,
                 provider: str, offline: bool, base: dict[str, Any]) -> None:
        super().__init__(event, context)
        self.t = tracker
        self.agent = agent
        self.model = model
        self.provider = provider
        self.offline = offline
        #: the fields every llm.* payload starts with (shared by the agent's turns: copied, never changed)
        self._base = base
        self._routing: tuple[str, str | None] | None = None  # last tool called this turn, with its reason
        self._step: str | None = None  # the node this turn runs in (for file attribution)

    async def on_turn(self, call_next: Any, event: BaseEvent, context: Any) -> Any:
        parent = current_node.get()
        self._step = parent
        node = self.t.new_node_id()
        self.t.files.nest(node, parent)
        payload: dict[str, Any] = {"agent": self.agent, "input": _event_text(event)}
        if parent:
            payload["parent_node"] = parent
        channel = _channel_id(context)
        handoff = self.t.handoff_from(channel, self.agent) if channel else None
        if handoff:
            payload["edges"] = [[handoff[1], "handoff"]]
        self.t.emit_full("agent.turn.started", payload, node)
        if handoff and channel:
            moved: dict[str, Any] = {"agent": self.agent, "from": handoff[0], "to": self.agent, "channel": channel,
                                     "from_node": handoff[1]}
            if handoff[2]:
                moved["tool"] = handoff[2]
            if handoff[3]:
                moved["reason"] = handoff[3]
            self.t.emit("agent.handoff", moved, node)
        node_token, agent_token = current_node.set(node), current_agent.set(self.agent)
        start = time.monotonic()
        try:
            response = await call_next(event, context)
        except BaseException as exc:
            self.t.emit("agent.turn.finished", {"agent": self.agent, "status": "failed",
                                                "duration": time.monotonic() - start,
                                                "error": f"{type(exc).__name__}: {exc}"}, node)
            raise
        finally:
            current_node.reset(node_token)
            current_agent.reset(agent_token)
            if channel:
                tool, reason = self._routing or (None, None)
                self.t.spoke(channel, self.agent, node, tool, reason)
        self.t.emit_full("agent.turn.finished", {"agent": self.agent, "status": "completed",
                                                 "duration": time.monotonic() - start,
                                                 "output": getattr(response, "content", None) or ""}, node)
        return response

    async def on_llm_call(self, call_next: Any, events: Any, context: Any) -> Any:
        node = current_node.get()
        base = self._base
        call = LLMCall(self.agent, base, node, _config_of(context))
        call.parent = enclosing_call()
        call.nested = call.parent is not None  # its budget and policy checks must not wait for the call it is in
        gate = self.t.policy
        if gate is not None:  # before anything is recorded: a refused call never reaches the model
            refused, reserved = await gate.check_llm(
                self.agent, self.model, node, nested=call.nested,
                estimate=self.t._estimate(call, events, context) if gate.costly else 0.0,
                paused=lambda: (b := self.t.budget) is not None and b.pausing)  # waiting for a resume: not counted
            if refused is not None:
                return refused_response(refused, self.model)
            if reserved is not None:  # in flight for the policy until it is priced (LLMCall.settle)
                call.gated, call.gate_reserved = gate.in_flight, reserved
        token = current_llm_call.set(call)
        start = time.monotonic()
        try:
            resp = await call_next(events, context)
        except BaseException as exc:
            call.settle()  # admitted, and ended without a price
            if call.req_seq is not None:  # a refused budget never reached the model: no response to record
                self.t.emit("llm.response", {**base, "status": "error", "duration": time.monotonic() - start,
                                             "error": f"{type(exc).__name__}: {exc}"}, node, call.req_seq)
            raise
        finally:
            current_llm_call.reset(token)
            call.done = True
        try:
            return self._answered(call, resp, events, start)
        finally:
            if call.budgeted is not None or call.gated is not None:  # recording the answer failed before its price
                call.settle()

    def _answered(self, call: LLMCall, resp: Any, events: Any, start: float) -> Any:
        """Record a call's answer: its response, message, cost (the budget told its price)."""
        base, node = self._base, call.node
        req = call.req_seq
        if req is None:  # the client was not wrapped (hooks not installed): record what we know
            req = self.t.emit_full("llm.request", {**base, "messages": len(events),
                                                   "input": next((_event_text(e) for e in reversed(events)
                                                                  if isinstance(e, ModelRequest)), "")}, node)
        model = resp.model or self.model
        usage = resp.usage
        prompt_tokens = int(usage.prompt_tokens or 0)
        completion_tokens = int(usage.completion_tokens or 0)
        full_usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": int(usage.total_tokens or prompt_tokens + completion_tokens)}
        for extra in ("cache_read_input_tokens", "cache_creation_input_tokens", "thinking_tokens"):
            value = getattr(usage, extra, None)
            if isinstance(value, int):
                full_usage[extra] = value
        calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in resp.tool_calls.calls] \
            if resp.tool_calls else []
        payload = {**base, "model": model, "status": "ok", "duration": time.monotonic() - start,
                   "usage": full_usage, "tool_calls": calls}
        content = resp.content  # a property (message.content): read once
        if content:
            payload["content"] = content
        if resp.finish_reason:
            payload["finish_reason"] = str(resp.finish_reason)
        if call.served:
            payload["replayed"] = True
        res_seq = self.t.emit_full("llm.response", payload, node, req)
        if content:
            self.t.emit_full("agent.message", {"agent": self.agent, "content": content}, node, res_seq)
        price = self.t.prices.price(model)
        # a response served from a recorded session (labd replay) cost nothing now: the record keeps its tokens
        cost = 0.0 if call.served else price.cost(prompt_tokens, completion_tokens)
        self.t.add_cost(cost, self.agent)
        if not call.served:  # what the next calls' estimates take an answer's length to be
            self.t.longest_answer = max(self.t.longest_answer, completion_tokens)
        if call.budgeted is not None or call.gated is not None:  # after the cost is counted: a waiting call sees both
            call.settle(cost, real=not call.served)
        self.t.emit("cost.recorded", {"agent": self.agent, "model": model, "prompt_tokens": prompt_tokens,
                                      "completion_tokens": completion_tokens,
                                      "cost": cost, "currency": "USD", "offline": self.offline,
                                      "price_source": "replay" if call.served else price.source}, node, res_seq)
        return resp

    async def on_tool_execution(self, call_next: Any, event: Any, context: Any) -> Any:
        node = current_node.get()
        try:
            arguments: Any = event.serialized_arguments
        except Exception:  # noqa: BLE001 - malformed JSON from the model is recorded as given
            arguments = event.arguments
        self._routing = (event.name, str(arguments.get("reason")) if isinstance(arguments, dict)
                         and arguments.get("reason") else None)
        call = self.t.emit_full("tool.call", {"agent": self.agent, "call_id": str(event.id), "name": event.name,
                                              "arguments": arguments}, node)
        child = _subagent_of(event.name)
        if child:
            objective = arguments.get("objective") or arguments.get("task") if isinstance(arguments, dict) else None
            self.t.emit("subagent.started", {"agent": self.agent, "child": child, "task_id": str(event.id),
                                             "objective": clip(str(objective or arguments), MAX_TEXT)}, node, call)
        call_token, agent_token = current_call.set(str(event.id)), current_agent.set(self.agent)
        model_token = current_model.set(self.model)
        start = time.monotonic()
        try:
            gate = self.t.policy
            # the session's own run_code is decided once, inside it, as a `code` action (with its language and
            # network): checking it here too would record two decisions and ask a human twice
            refused = None if gate is None or event.name == CODE_TOOL else await gate.check(
                gate.action("tool", self.agent, tool=event.name, model=self.model), node)
            # refused: the tool does not run, its (error) result is the refusal the model reads
            result = refused_tool_result(event, refused) if refused is not None else await call_next(event, context)
        finally:
            current_call.reset(call_token)
            current_agent.reset(agent_token)
            current_model.reset(model_token)
        result_text = _result_text(result)
        payload: dict[str, Any] = {"agent": self.agent, "call_id": str(event.id), "name": event.name,
                                   "status": "ok", "duration": time.monotonic() - start,
                                   "result": result_text}
        if isinstance(result, (ToolErrorEvent, ToolNotFoundEvent)):  # noqa: UP038 - ag2 event types are not unionable
            payload["status"] = "error"
            payload["error"] = (f"{type(result.error).__name__}: {result.error}"
                                if getattr(result, "error", None) else type(result).__name__)
        self.t.emit_full("tool.result", payload, node, call)
        if child:
            failed = payload["status"] == "error" or result_text.startswith("Sub-task")
            done: dict[str, Any] = {"agent": self.agent, "child": child, "task_id": str(event.id),
                                    "status": "failed" if failed else "completed"}
            done["error" if failed else "result"] = clip(payload.get("error") or result_text, MAX_TEXT)
            self.t.emit("subagent.finished", done, node, call)
        self.t.files.scan(node, agent=self.agent, tool=event.name, step=self._step)
        return result


def _channel_id(context: Any) -> str | None:
    """The ag2 network channel a turn runs in (group chat / workflow / handoffs), if any."""
    deps = getattr(context, "dependencies", None)
    if not deps:
        return None
    channel = deps.get(CHANNEL_DEP)
    if channel is None:
        return None
    cid = getattr(channel, "channel_id", None) or getattr(getattr(channel, "metadata", None), "channel_id", None)
    return str(cid) if cid else None


def _config_of(context: Any) -> Any:
    return getattr(context, "config", None)


def _subagent_of(tool_name: str) -> str | None:
    """The sub-agent a tool call runs, if it is a delegation tool."""
    if tool_name.startswith("task_"):
        return tool_name.removeprefix("task_")
    if tool_name in SUBTASK_TOOLS:
        return "subtask"
    return None
