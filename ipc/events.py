"""Event kinds: the typed, versioned schema of every fact labd records about a session.

An event on the runner channel is a compact list ``[src_seq, ts, kind, node_id, parent, payload]``;
in the store and on the event socket it is an object with the session-wide ``seq`` the daemon assigned
(see docs/protocol.md, "Events"). :func:`validate` checks a payload against its kind's schema; ingest
rejects (and counts) anything that fails, it never raises past ingest.

Versioning: every kind below is at version 1. An incompatible change gets a new kind name with a
version suffix (``output@2``) so old readers never misread new rows.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS", "KIND_VERSION", "EventError", "validate", "TERMINAL_STATUSES", "STATUSES"]

NUM = (int, float)
ANY = object
#: session statuses, in lifecycle order; the last four are terminal
STATUSES = ("created", "starting", "running", "completed", "failed", "cancelled", "lost")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "lost"})


class EventError(ValueError):
    """An event that does not match its kind's schema."""


# kind -> {field: (accepted types, required)}
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...] | type, bool]]] = {
    # lifecycle (daemon unless noted)
    "session.created": {"workflow": (str, True), "name": (str, True), "params": (dict, True),
                        "limits": (dict, True), "workdir": (str, True)},
    "session.launched": {"pid": (int, True), "create_time": (NUM, True), "launcher": (str, True)},
    "session.started": {"pid": (int, True), "workdir": (str, True)},  # runner
    "session.finished": {"outcome": (str, True), "error": (str, False), "traceback": (str, False),
                         "result": (ANY, False)},  # runner: what the workflow did
    "session.stopping": {"by": (str, True), "reason": (str, True), "step": (str, True)},
    "session.ended": {"status": (str, False), "reason": (str, False), "exit_code": (int, False),
                      "signal": (int, False), "ended_by": (str, True)},
    "session.adopted": {"pid": (int, True)},
    # output
    "output": {"stream": (str, True), "text": (str, True)},
    "log": {"level": (str, True), "event": (str, True), "logger": (str, False), "fields": (dict, False)},
    # workflow
    "step.started": {"name": (str, True)},
    "step.finished": {"name": (str, True), "status": (str, True), "duration": (NUM, True),
                      "error": (str, False)},
    "custom": {"name": (str, True), "data": (ANY, False)},
    # limits and resources (daemon)
    "limit.exceeded": {"limit": (str, True), "measured": (NUM, True), "max": (NUM, True),
                       "unit": (str, True), "action": (str, True)},
    "resource.sample": {"rss": (int, True), "cpu_percent": (NUM, True), "num_procs": (int, True),
                        "peak_rss": (int, True), "peak_cpu_percent": (NUM, True)},
    # an event that failed validation, kept so the history shows it (daemon)
    "event.rejected": {"kind": (str, True), "reason": (str, True)},
}
KIND_VERSION = {kind: 1 for kind in SCHEMAS}

#: kinds that must carry a node_id
_NEEDS_NODE = frozenset({"step.started", "step.finished"})


def validate(kind: Any, payload: Any, node_id: Any = None) -> None:
    """Raise :class:`EventError` unless ``payload`` matches the schema of ``kind``."""
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise EventError(f"unknown event kind {kind!r}")
    if not isinstance(payload, dict):
        raise EventError(f"{kind}: payload must be an object")
    if node_id is not None and not isinstance(node_id, str):
        raise EventError(f"{kind}: node_id must be a string")
    if kind in _NEEDS_NODE and node_id is None:
        raise EventError(f"{kind}: node_id is required")
    for field, (types, required) in schema.items():
        value = payload.get(field, _MISSING)
        if value is _MISSING or value is None:
            if required:
                raise EventError(f"{kind}: missing field {field!r}")
            continue
        if types is ANY:
            continue
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise EventError(f"{kind}: field {field!r} must not be a boolean")
        if not isinstance(value, types):
            raise EventError(f"{kind}: field {field!r} has the wrong type ({type(value).__name__})")


_MISSING = object()
