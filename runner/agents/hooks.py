"""Every ag2 agent a session runs is tracked, however it was built: one class-level seam in the runner.

ag2 builds a turn in ``Agent._drive_scope``: it instantiates the agent's middleware factories plus the
turn's ``additional_middleware`` and binds the LLM client. :func:`track_all_agents` wraps that method
once, in the runner process only (never in the daemon or the template's other children), so that

- an agent without labd's tracking middleware (a plain ``ag2.Agent(...)``, an agent a library or an
  ag2 network built) gets it for the turn, with the model, provider and offline flag read from its
  config: the same events and attribution as ``ctx.agent``;
- the LLM client of every turn is wrapped by :class:`RecordingClient`, the innermost layer, which sees
  the request exactly as it goes to the model (after any middleware rewrote it, with the tool schemas
  bound for the turn): it records the full request and checks the budget *before* the call.

The cost per turn is a dictionary lookup and two small objects (docs/benchmarks.md).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from labd.runner import replay

__all__ = ["track_all_agents", "untracked", "RecordingClient", "current_llm_call", "LLMCall"]

_installed: list[Callable[[], Any]] = []
_off: contextvars.ContextVar[bool] = contextvars.ContextVar("labd_untracked", default=False)


@contextmanager
def untracked() -> Iterator[None]:
    """Agents run inside this block are not tracked (only for measuring the tracking's own overhead,
    scripts/bench_tracking.py; the record of a session that uses it is knowingly incomplete)."""
    token = _off.set(True)
    try:
        yield
    finally:
        _off.reset(token)


class LLMCall:
    """One LLM call in flight: what the tracking middleware knows, filled in by the recording client."""

    __slots__ = ("agent", "base", "node", "req_seq", "config", "served", "budgeted", "nested", "reserved", "done",
                 "parent", "gated", "gate_reserved")

    def __init__(self, agent: str, base: dict[str, Any], node: str | None, config: Any) -> None:
        self.agent = agent
        self.base = base
        self.node = node
        self.req_seq: int | None = None
        self.config = config
        self.served = False  # answered from a recorded session (labd replay), not by the model
        self.budgeted: Any = None  # the Budget that admitted this call, told its price when it ends
        self.nested = False  # made inside another call in flight (a verifier inside a call: runner/agents/nesting.py)
        self.reserved = 0.0  # what the budget counts this call as possibly costing while it is in flight
        self.done = False  # it returned or raised: calls made later in threads it started are not inside it
        self.parent: LLMCall | None = None  # the call it was made in, if any: enclosing once this one is done
        self.gated: Any = None  # the policy's calls in flight (runner/agents/inflight.py), told when it ends
        self.gate_reserved = 0.0  # ... what it counts this call as possibly costing

    def settle(self, cost: float = 0.0, real: bool = False) -> None:
        """Tell the budget and the policy's calls in flight that this call ended, at ``cost`` (once each)."""
        if self.budgeted is not None:
            self.budgeted.priced(cost, real=real, reserved=self.reserved)
            self.budgeted = None
        if self.gated is not None:
            self.gated.priced(self.agent, self.gate_reserved, cost, real=real)
            self.gated = None


#: set by TrackingMiddleware.on_llm_call around the call; read by the RecordingClient inside it
current_llm_call: contextvars.ContextVar[LLMCall | None] = contextvars.ContextVar("labd_llm_call", default=None)


class RecordingClient:
    """Wraps an ag2 LLM client: records the complete request and enforces the budget before each call."""

    def __init__(self, inner: Any, factory: Any, config: Any) -> None:
        self._inner = inner
        self._factory = factory
        self._config = config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __call__(self, messages: Any, context: Any, *, tools: Any = (), response_schema: Any = None,
                       serializer: Any = None) -> Any:
        call = current_llm_call.get()
        if call is not None:
            tracker = self._factory.tracker
            call.config = self._config
            if tracker.budget is not None:  # no coroutine to await per call when the session has no budget
                await tracker.before_llm_call(call, messages, context)
            call.req_seq = tracker.record_request(call, messages, context, tools, response_schema)
            replayer = replay.active()
            if replayer is not None and not replayer.live:  # a replay: the recorded response, if it was recorded
                recorded = replayer.serve_llm(tracker.full_request(call, messages, context, tools, response_schema),
                                              node=call.node, agent=call.agent)
                if recorded is not None:
                    call.served = True
                    return await replay.send_response(recorded, context)
        return await self._inner(messages, context, tools=tools, response_schema=response_schema,
                                 serializer=serializer)


def track_all_agents(factory: Callable[[], Any]) -> None:
    """Install the class-level seam (once per process); ``factory`` returns the session's AgentFactory."""
    _installed[:] = [factory]
    from ag2 import Agent

    from labd.runner.agents import nesting

    nesting.install()  # calls made in plain threads inside a call are known as nested (runner/agents/nesting.py)

    if getattr(Agent._drive_scope, "_labd_hook", False):
        return
    original = Agent._drive_scope

    def _drive_scope(self: Any, event: Any, *, client: Any, additional_middleware: Any = (), **kwargs: Any) -> Any:
        if _installed and not _off.get():
            agents = _installed[0]()
            if not isinstance(client, RecordingClient):
                client = RecordingClient(client, agents, getattr(self, "config", None))
            if not _is_tracked(self):
                additional_middleware = (agents.tracker_for(self), *additional_middleware)
        return original(self, event, client=client, additional_middleware=additional_middleware, **kwargs)

    _drive_scope._labd_hook = True  # type: ignore[attr-defined]
    Agent._drive_scope = _drive_scope  # type: ignore[method-assign]


def _is_tracked(agent: Any) -> bool:
    cached = agent.__dict__.get("_labd_tracked")
    if cached is None:
        cached = any(getattr(m, "_labd_tracking", False) for m in getattr(agent, "_middleware", ()))
        agent.__dict__["_labd_tracked"] = cached
    return bool(cached)
