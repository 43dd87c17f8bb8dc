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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SpanRecord", "span_id", "spans_from_events", "trace_id"]

CLOSERS = ("step.finished", "agent.turn.finished", "llm.response", "tool.result", "code.execution",
           "session.ended")


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


def _node_parent(node: dict[str, Any] | None) -> str:
    if node and node.get("parent_node"):
        return f"node:{node['parent_node']}"
    return "session"


def spans_from_events(session: dict[str, Any], events: Iterable[dict[str, Any]],
                      node: Callable[[str], dict[str, Any] | None],
                      opener: Callable[[int], dict[str, Any] | None]) -> list[SpanRecord]:
    """Spans closed by ``events`` (one session's, in seq order).

    ``node(node_id)`` returns the steps row of a node (started_at, parent_node, kind, agent, status);
    ``opener(src_seq)`` returns the runner event with that ``src_seq`` (an LLM request, a tool call)."""
    sid = session["id"]
    out: list[SpanRecord] = []
    for ev in events:
        kind, p, ts = ev["kind"], ev["payload"], float(ev["ts"])
        nid = ev.get("node_id")
        parent = f"node:{nid}" if nid else "session"
        common = {"labd.session.id": sid, "gen_ai.conversation.id": sid}
        if kind in ("step.finished", "agent.turn.finished") and nid:
            row = node(nid) or {}
            start = float(row.get("started_at") or ts - float(p.get("duration") or 0))
            status = str(p.get("status") or row.get("status") or "completed")
            attrs = {**common, "labd.node.id": nid, "labd.node.kind": row.get("kind") or "step",
                     "labd.node.status": status}
            if kind == "agent.turn.finished":
                name = f"invoke_agent {p.get('agent') or row.get('agent') or '?'}"
                attrs["gen_ai.operation.name"] = "invoke_agent"
                attrs["gen_ai.agent.name"] = str(p.get("agent") or row.get("agent") or "")
            else:
                name = str(p.get("name") or row.get("name") or nid)
            out.append(SpanRecord(sid, f"node:{nid}", name, start, ts, _node_parent(row), attrs,
                                  error=str(p.get("error")) if status not in ("completed", "ok") else None))
        elif kind == "llm.response":
            req = opener(ev["parent"]) if ev.get("parent") else None
            usage = p.get("usage") or {}
            start = float(req["ts"]) if req else ts - float(p.get("duration") or 0)
            model = str(p.get("model") or "")
            attrs = {**common, "gen_ai.operation.name": "chat", "gen_ai.system": str(p.get("provider") or ""),
                     "gen_ai.request.model": model, "gen_ai.response.model": model,
                     "gen_ai.agent.name": str(p.get("agent") or ""), "labd.offline": bool(p.get("offline"))}
            for src, dst in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                             ("completion_tokens", "gen_ai.usage.output_tokens")):
                if isinstance(usage.get(src), int):
                    attrs[dst] = usage[src]
            if p.get("finish_reason"):
                attrs["gen_ai.response.finish_reasons"] = [str(p["finish_reason"])]
            out.append(SpanRecord(sid, f"seq:{ev['seq']}", f"chat {model}", start, ts, parent, attrs,
                                  error=str(p.get("error")) if p.get("status") not in (None, "ok") else None,
                                  kind="client"))
        elif kind == "tool.result":
            req = opener(ev["parent"]) if ev.get("parent") else None
            start = float(req["ts"]) if req else ts - float(p.get("duration") or 0)
            attrs = {**common, "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": str(p.get("name") or ""),
                     "gen_ai.tool.call.id": str(p.get("call_id") or ""), "gen_ai.agent.name": str(p.get("agent") or "")}
            out.append(SpanRecord(sid, f"seq:{ev['seq']}", f"execute_tool {p.get('name')}", start, ts, parent, attrs,
                                  error=str(p.get("error") or "tool failed") if p.get("status") != "ok" else None))
        elif kind == "code.execution":
            duration = float(p.get("duration") or 0)
            attrs = {**common, "labd.code.language": str(p.get("language") or ""),
                     "labd.code.exit_code": int(p["exit_code"]) if isinstance(p.get("exit_code"), int) else -1}
            failed = isinstance(p.get("exit_code"), int) and p["exit_code"] != 0
            out.append(SpanRecord(sid, f"seq:{ev['seq']}", "run_code", ts - duration, ts, parent, attrs,
                                  error=f"exit code {p['exit_code']}" if failed else None))
        elif kind == "session.ended":
            status = str(p.get("status") or session.get("status") or "")
            attrs = {**common, "labd.session.name": str(session.get("name") or ""),
                     "labd.workflow": str(session.get("workflow") or ""), "labd.session.status": status,
                     "labd.cost.usd": float(session.get("cost") or 0.0)}
            out.append(SpanRecord(sid, "session", f"session {session.get('workflow')}",
                                  float(session.get("created_at") or ts), ts, None, attrs,
                                  error=str(p.get("reason") or status) if status != "completed" else None))
    return out
