"""Spans from the record: sessions, steps, agent turns, LLM calls, tool calls and code executions.

A pure mapping from stored events (and the steps projection) to OpenTelemetry spans, so the exporter
(:mod:`labd.daemon.otel_export`) stays a loop of read → map → send. A span is produced when the event that
*closes* it is read (``step.finished``, ``agent.turn.finished``, ``llm.response``, ``tool.result``,
``code.execution``, ``session.ended``), which lets the exporter move its cursor forward event by event.

Ids are deterministic: the trace id is derived from the session id and each span id from the session id
and the span's key (``node:n4``, ``seq:57``). A span sent twice (a collector that stored a batch but whose
reply was lost) is the same span, and children may be sent before their parents.

Attributes follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``): the conversation id is the
session id; system, request/response model, input/output tokens per LLM call; tool name and call id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_TIME", "BadSpan", "SpanRecord", "int_attr", "seconds", "span_id", "spans_from_events", "text",
           "trace_id", "window"]

CLOSERS = ("step.finished", "agent.turn.finished", "llm.response", "tool.result", "code.execution",
           "session.ended")
#: the latest span time, in seconds since the epoch (in 2261): OTLP times are 64-bit nanoseconds, the SDK's signed
MAX_TIME = 9.2e9
#: characters kept of a string attribute, a span name or a status message
MAX_TEXT = 4096


class BadSpan(ValueError):
    """An event no span can be made of (its own time is not a time, its payload not an object)."""


def trace_id(session_id: str) -> int:
    """The 128-bit trace id of a session (never 0)."""
    return int.from_bytes(hashlib.sha256(f"labd-trace:{session_id}".encode()).digest()[:16], "big") or 1


def span_id(session_id: str, key: str) -> int:
    """The 64-bit span id of one span of a session (never 0)."""
    return int.from_bytes(hashlib.sha256(f"labd-span:{session_id}:{key}".encode()).digest()[:8], "big") or 1


@dataclass
class SpanRecord:
    """One finished span, independent of the OpenTelemetry SDK's classes."""

    session_id: str
    key: str
    name: str
    start: float
    end: float
    parent_key: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    kind: str = "internal"  # internal | client (LLM calls)
    seq: int = 0  # the event that closed it (the exporter's cursor moves past it once the span is acknowledged)


def _node_parent(node: dict[str, Any] | None) -> str:
    if node and node.get("parent_node"):
        return f"node:{node['parent_node']}"
    return "session"


def seconds(value: Any) -> float | None:
    """``value`` as a span time (seconds since the epoch), or None: not a number, NaN, infinite, negative or past
    :data:`MAX_TIME` (it would not fit OTLP's 64-bit nanoseconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        v = float(value)
    except OverflowError:  # an int past float's range
        return None
    return v if math.isfinite(v) and 0.0 <= v <= MAX_TIME else None


def int_attr(value: Any, *, minimum: int = -(2**63)) -> int | None:
    """``value`` as an int attribute (OTLP ``int_value`` is 64-bit signed), or None: not an int (booleans are
    not), or out of range — the attribute is then left out."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**63:
        return None
    return value


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A string attribute, span name or status message, cut at ``limit`` characters (so a batch stays far below
    a collector's request size limit, however long the texts a session recorded)."""
    s = value if isinstance(value, str) else str(value)
    return s if len(s) <= limit else s[:limit] + "…"


def window(end: float, start: Any = None, duration: Any = None) -> tuple[float, float, bool]:
    """``(start, end, clamped)`` of a span closed at ``end`` (the closing event's own time): from ``start`` if
    given, else ``end - duration`` (no duration: 0). A start that is not a time, or after ``end``, and a
    duration that is not a finite number >= 0 (``1e300``, NaN, negative) give a span of no length at ``end``,
    with ``clamped`` True."""
    if start is None:
        if duration is None:
            return end, end, False
        d = seconds(duration)  # a finite number >= 0 that fits (a longer one cannot end at a representable time)
        start = end - d if d is not None else None
    s = seconds(start)
    if s is None or s > end:
        return end, end, True
    return s, end, False


def _span(session: dict[str, Any], ev: dict[str, Any], node: Callable[[str], dict[str, Any] | None],
          opener: Callable[[int, int], dict[str, Any] | None]) -> SpanRecord | None:
    """The span ``ev`` closes (None for an event that closes none); raises ValueError/TypeError/... for an
    event no span can be made of."""
    sid = session["id"]
    kind, p = ev["kind"], ev["payload"]
    ts = seconds(ev["ts"])
    if ts is None:
        raise BadSpan(f"event time {ev['ts']!r} is not a time in seconds since the epoch (0 to {MAX_TIME:.0f})")
    if not isinstance(p, dict):
        raise BadSpan("payload is not an object")
    nid = ev.get("node_id")
    parent = f"node:{nid}" if nid else "session"
    attrs: dict[str, Any] = {"labd.session.id": sid, "gen_ai.conversation.id": sid}
    if kind in ("step.finished", "agent.turn.finished") and nid:
        row = node(nid) or {}
        start, end, clamped = window(ts, row.get("started_at"), p.get("duration"))
        status = text(p.get("status") or row.get("status") or "completed")
        attrs.update({"labd.node.id": text(nid), "labd.node.kind": text(row.get("kind") or "step"),
                      "labd.node.status": status})
        if kind == "agent.turn.finished":
            agent = text(p.get("agent") or row.get("agent") or "")
            name = f"invoke_agent {agent or '?'}"
            attrs.update({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent})
        else:
            name = text(p.get("name") or row.get("name") or nid)
        error = text(p.get("error")) if status not in ("completed", "ok") else None
        return _record(sid, f"node:{nid}", name, start, end, clamped, _node_parent(row), attrs, error)
    if kind == "llm.response":
        req = opener(ev["parent"], ev["seq"]) if ev.get("parent") else None
        start, end, clamped = window(ts, req["ts"], None) if req else window(ts, None, p.get("duration"))
        usage = p.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        model = text(p.get("model") or "")
        attrs.update({"gen_ai.operation.name": "chat", "gen_ai.system": text(p.get("provider") or ""),
                      "gen_ai.request.model": model, "gen_ai.response.model": model,
                      "gen_ai.agent.name": text(p.get("agent") or ""), "labd.offline": bool(p.get("offline"))})
        for src, dst in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                         ("completion_tokens", "gen_ai.usage.output_tokens")):
            if (n := int_attr(usage.get(src), minimum=0)) is not None:
                attrs[dst] = n
        if p.get("finish_reason"):
            attrs["gen_ai.response.finish_reasons"] = [text(p["finish_reason"])]
        error = text(p.get("error")) if p.get("status") not in (None, "ok") else None
        return _record(sid, f"seq:{ev['seq']}", text(f"chat {model}"), start, end, clamped, parent, attrs, error,
                       kind="client")
    if kind == "tool.result":
        req = opener(ev["parent"], ev["seq"]) if ev.get("parent") else None
        start, end, clamped = window(ts, req["ts"], None) if req else window(ts, None, p.get("duration"))
        tool = text(p.get("name") or "")
        attrs.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                      "gen_ai.tool.call.id": text(p.get("call_id") or ""),
                      "gen_ai.agent.name": text(p.get("agent") or "")})
        error = text(p.get("error") or "tool failed") if p.get("status") != "ok" else None
        return _record(sid, f"seq:{ev['seq']}", text(f"execute_tool {p.get('name')}"), start, end, clamped, parent,
                       attrs, error)
    if kind == "code.execution":
        start, end, clamped = window(ts, None, p.get("duration"))
        code = int_attr(p.get("exit_code"))
        attrs.update({"labd.code.language": text(p.get("language") or ""),
                      "labd.code.exit_code": -1 if code is None else code})
        failed = isinstance(p.get("exit_code"), int) and p["exit_code"] != 0
        error = text(f"exit code {p['exit_code']}") if failed else None
        return _record(sid, f"seq:{ev['seq']}", "run_code", start, end, clamped, parent, attrs, error)
    if kind == "session.ended":
        status = text(p.get("status") or session.get("status") or "")
        attrs.update({"labd.session.name": text(session.get("name") or ""),
                      "labd.workflow": text(session.get("workflow") or ""), "labd.session.status": status,
                      "labd.cost.usd": float(session.get("cost") or 0.0)})
        start, end, clamped = window(ts, session.get("created_at") or ts, None)
        error = text(p.get("reason") or status) if status != "completed" else None
        first = session.get("first_end_seq")  # a resumed session ends again: that run's span is its own
        key = "session" if first is None or ev["seq"] <= first else f"session@{ev['seq']}"
        return _record(sid, key, text(f"session {session.get('workflow')}"), start, end, clamped, None, attrs, error)
    return None


def _record(sid: str, key: str, name: str, start: float, end: float, clamped: bool, parent: str | None,
            attrs: dict[str, Any], error: str | None, kind: str = "internal") -> SpanRecord:
    if clamped:
        attrs["labd.time.clamped"] = True
    return SpanRecord(sid, key, name, start, end, parent, attrs, error=error, kind=kind)


def spans_from_events(session: dict[str, Any], events: Iterable[dict[str, Any]],
                      node: Callable[[str], dict[str, Any] | None],
                      opener: Callable[[int, int], dict[str, Any] | None], *,
                      skipped: Callable[[dict[str, Any], Exception], None] | None = None) -> list[SpanRecord]:
    """Spans closed by ``events`` (one session's, in seq order).

    ``node(node_id)`` returns the steps row of a node (started_at, parent_node, kind, agent, status);
    ``opener(src_seq, seq)`` returns the runner event with that ``src_seq`` before ``seq`` (an LLM request, a tool
    call: what the event at ``seq`` closes). An event
    no span can be made of (its own time is not a time, a field of an impossible type) is left out and given to
    ``skipped(event, why)``: one bad event never stops the others."""
    out: list[SpanRecord] = []
    for ev in events:
        try:
            span = _span(session, ev, node, opener)
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
            if skipped is not None:
                skipped(ev, exc)
            continue
        if span is not None:
            span.seq = int(ev.get("seq") or 0)
            out.append(span)
    return out
