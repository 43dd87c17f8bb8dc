"""The dashboard's request fields: a JSON body's fields and the query's numbers, checked, each error a
``ValueError`` whose message the API answers as a 400 ``bad_request`` (:mod:`labd.frontends.ui.server`)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

__all__ = ["RESOLVE_FIELDS", "START_FIELDS", "count", "field", "filters", "only", "optional"]

#: the fields a start's and a resolve's body may have (any other is a 400 naming it, not ignored)
START_FIELDS = ("workflow", "params", "name", "memory", "cpu", "timeout", "budget")
RESOLVE_FIELDS = ("session", "decision", "approval_id", "feedback", "hypothesis")


def field(body: dict[str, Any], key: str) -> str:
    """A required string field of a request body (a ValueError, i.e. a 400 saying which, otherwise)."""
    if key not in body:
        raise ValueError(f"missing field {key!r}")
    value = body[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, not {json.dumps(value)}")
    return value


def only(body: dict[str, Any], known: tuple[str, ...]) -> None:
    """A ValueError (a 400) naming the fields of ``body`` that are not in ``known``: an ignored ``memroy`` started a
    session with no memory limit, an ignored ``feeback`` answered an approval without the feedback."""
    unknown = sorted(k for k in body if k not in known)
    if unknown:
        raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(the fields: {', '.join(known)})")


def optional(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    """Field ``key`` of ``body`` if it is a ``kind``; None if absent, null or empty; a ValueError (a 400) otherwise
    (a ``name`` of ``0`` or ``false`` was taken as no name, ``params`` of ``0`` as none)."""
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, kind):
        raise ValueError(f"field {key!r} must be {what}, not {json.dumps(value)[:80]}")
    return value or None


def count(request: Request, name: str, default: int) -> int:
    """Query parameter ``name`` as a whole number of at least 0 (``default`` when absent); ValueError (a 400) saying
    so otherwise, not Python's own ``int()`` message."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise ValueError(f"{name} must be a whole number (0 or more), not {raw[:40]!r}")
    return int(raw)


def filters(request: Request, *names: str) -> None:
    """A ValueError (a 400) naming the query parameters of ``request`` that are not in ``names``, for the paths that
    filter: ``/api/sessions?stauts=running`` listed every session, as if no filter had been asked for."""
    unknown = sorted(k for k in request.query_params if k not in names)
    if unknown:
        raise ValueError(f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(k[:40]) for k in unknown[:5])} (this path takes: {', '.join(names)})")
