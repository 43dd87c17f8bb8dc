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

import time
from collections.abc import Callable
from typing import Any

from ag2.events import BaseEvent, ModelRequest, ToolErrorEvent, ToolNotFoundEvent, ToolResultsEvent
from ag2.middleware import BaseMiddleware

from labd.runner.agents.context import current_agent, current_call
from labd.runner.agents.pricing import PriceTable
from labd.runner.context import current_node
from labd.runner.files import FileTracker

__all__ = ["Tracker", "TrackingMiddleware"]

MAX_TEXT = 4000
SUBTASK_TOOLS = ("run_subtask", "run_subtasks")


def _clip(text: str | None, limit: int = MAX_TEXT) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


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
                 files: FileTracker) -> None:
        self.emit = emit
        self.new_node_id = new_node_id
        self.prices = prices
        self.files = files

    def middleware(self, agent: str, model: str, provider: str, offline: bool) -> Callable[..., BaseMiddleware]:
        def factory(event: BaseEvent, context: Any) -> BaseMiddleware:
            return TrackingMiddleware(event, context, tracker=self, agent=agent, model=model, provider=provider,
                                      offline=offline)
        return factory


class TrackingMiddleware(BaseMiddleware):
    """Records one agent turn, its LLM calls and tool executions (created by ag2 once per turn)."""

    def __init__(self, event: BaseEvent, context: Any, *, tracker: Tracker, agent: str, model: str,
                 provider: str, offline: bool) -> None:
        super().__init__(event, context)
        self.t = tracker
        self.agent = agent
        self.model = model
        self.provider = provider
        self.offline = offline

    async def on_turn(self, call_next: Any, event: BaseEvent, context: Any) -> Any:
        parent = current_node.get()
        node = self.t.new_node_id()
        payload: dict[str, Any] = {"agent": self.agent, "input": _clip(_event_text(event))}
        if parent:
            payload["parent_node"] = parent
        self.t.emit("agent.turn.started", payload, node)
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
        self.t.emit("agent.turn.finished", {"agent": self.agent, "status": "completed",
                                            "duration": time.monotonic() - start,
                                            "output": _clip(getattr(response, "content", None))}, node)
        return response

    async def on_llm_call(self, call_next: Any, events: Any, context: Any) -> Any:
        node = current_node.get()
        last_input = next((_event_text(e) for e in reversed(events) if isinstance(e, ModelRequest)), "")
        base = {"agent": self.agent, "model": self.model, "provider": self.provider, "offline": self.offline}
        req = self.t.emit("llm.request", {**base, "messages": len(events), "input": _clip(last_input)}, node)
        start = time.monotonic()
        try:
            resp = await call_next(events, context)
        except BaseException as exc:
            self.t.emit("llm.response", {**base, "status": "error", "duration": time.monotonic() - start,
                                         "error": f"{type(exc).__name__}: {exc}"}, node, req)
            raise
        model = resp.model or self.model
        usage = resp.usage
        prompt_tokens = int(usage.prompt_tokens or 0)
        completion_tokens = int(usage.completion_tokens or 0)
        calls = [{"id": c.id, "name": c.name} for c in resp.tool_calls.calls] if resp.tool_calls else []
        payload = {**base, "model": model, "status": "ok", "duration": time.monotonic() - start,
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": int(usage.total_tokens or prompt_tokens + completion_tokens)},
                   "tool_calls": calls}
        if resp.content:
            payload["content"] = _clip(resp.content)
        if resp.finish_reason:
            payload["finish_reason"] = str(resp.finish_reason)
        res_seq = self.t.emit("llm.response", payload, node, req)
        if resp.content:
            self.t.emit("agent.message", {"agent": self.agent, "content": _clip(resp.content)}, node, res_seq)
        price = self.t.prices.price(model)
        self.t.emit("cost.recorded", {"agent": self.agent, "model": model, "prompt_tokens": prompt_tokens,
                                      "completion_tokens": completion_tokens,
                                      "cost": price.cost(prompt_tokens, completion_tokens), "currency": "USD",
                                      "offline": self.offline, "price_source": price.source}, node, res_seq)
        return resp

    async def on_tool_execution(self, call_next: Any, event: Any, context: Any) -> Any:
        node = current_node.get()
        try:
            arguments: Any = event.serialized_arguments
        except Exception:  # noqa: BLE001 - malformed JSON from the model is recorded as given
            arguments = event.arguments
        call = self.t.emit("tool.call", {"agent": self.agent, "call_id": str(event.id), "name": event.name,
                                         "arguments": arguments}, node)
        child = _subagent_of(event.name)
        if child:
            objective = arguments.get("objective") or arguments.get("task") if isinstance(arguments, dict) else None
            self.t.emit("subagent.started", {"agent": self.agent, "child": child, "task_id": str(event.id),
                                             "objective": _clip(str(objective or arguments))}, node, call)
        call_token, agent_token = current_call.set(str(event.id)), current_agent.set(self.agent)
        start = time.monotonic()
        try:
            result = await call_next(event, context)
        finally:
            current_call.reset(call_token)
            current_agent.reset(agent_token)
        payload: dict[str, Any] = {"agent": self.agent, "call_id": str(event.id), "name": event.name,
                                   "status": "ok", "duration": time.monotonic() - start,
                                   "result": _clip(_result_text(result))}
        if isinstance(result, (ToolErrorEvent, ToolNotFoundEvent)):  # noqa: UP038 - ag2 event types are not unionable
            payload["status"] = "error"
            payload["error"] = _clip(f"{type(result.error).__name__}: {result.error}"
                                     if getattr(result, "error", None) else type(result).__name__)
        self.t.emit("tool.result", payload, node, call)
        if child:
            failed = payload["status"] == "error" or payload["result"].startswith("Sub-task")
            done: dict[str, Any] = {"agent": self.agent, "child": child, "task_id": str(event.id),
                                    "status": "failed" if failed else "completed"}
            done["error" if failed else "result"] = payload.get("error") or payload["result"]
            self.t.emit("subagent.finished", done, node, call)
        self.t.files.scan(node, agent=self.agent, tool=event.name)
        return result


def _subagent_of(tool_name: str) -> str | None:
    """The sub-agent a tool call runs, if it is a delegation tool."""
    if tool_name.startswith("task_"):
        return tool_name.removeprefix("task_")
    if tool_name in SUBTASK_TOOLS:
        return "subtask"
    return None
