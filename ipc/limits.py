"""The rules a session's limits must meet: shared by the daemon, which enforces them, and by clients, which check
them before anything starts (``labd.Executor(memory="lots")`` fails where it is written, not in every future).

:func:`check_limits` takes the ``limits`` object of a request (docs/protocol.md, ``session.start``) and returns it
checked and in base units (bytes, percent of one core, seconds, USD), or raises :class:`LabdError` with the code the
daemon answers (``bad_limits``; ``bad_request`` for an unknown key or a ``limits`` that is not an object). What
only the daemon knows -- its ``memory_total``, its default ``procs`` and output cap -- it checks itself.
"""

from __future__ import annotations

import math
from typing import Any

from labd.ipc.errors import LabdError
from labd.ipc.events import BUDGET_MAX
from labd.ipc.units import (
    MIN_OUTPUT,
    BeyondAny,
    UnitError,
    parse_duration,
    parse_output_cap,
    parse_percent,
    parse_size,
)

__all__ = ["check_limits", "output_cap", "LIMIT_KEYS", "MAX_JSON_INT", "MAX_LIMIT", "MAX_PROCS", "MIN_MEMORY"]

#: the keys of a ``limits`` object
LIMIT_KEYS = ("memory", "cpu", "timeout", "budget", "budget_action", "procs", "output")
#: the largest process-count limit of a session (``limits.procs``, ``[daemon] procs``)
MAX_PROCS = 1_000_000
#: below this a runner cannot even start: an idle runner's PSS is ~7-12 MiB (docs/benchmarks.md), and the
#: channel, capture and first workflow import need headroom; a smaller --memory would kill every session
MIN_MEMORY = 32 * 2**20
#: the largest limits: beyond them a limit means nothing (a petabyte of memory; a century), and the store's
#: 64-bit columns could not hold some of them
MAX_LIMIT = {"memory": 2**50, "timeout": 100 * 365 * 86400.0, "budget": BUDGET_MAX}
#: the largest integer a request carries as a JSON number: the wire (labd.ipc.wire) sends larger ones as their digits
MAX_JSON_INT = 2**64 - 1
_NOT_GIVEN: Any = object()


def check_limits(raw: Any, *, procs: Any = _NOT_GIVEN, default_output: Any = None,
                 cluster: bool = False) -> dict[str, Any]:
    """``raw`` (a request's ``limits``; ``None`` for none) checked: a dict with every key of :data:`LIMIT_KEYS`.
    ``procs``: the process limit when ``raw`` has none (the request's own, or the daemon's default); ``cluster``:
    the session runs on a Ray cluster (its CPUs are its node's, not this machine's:
    :func:`labd.ipc.units.max_cpu_percent`)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise LabdError("bad_request", "field 'limits' must be an object", {"field": "limits"})
    unknown = set(raw) - set(LIMIT_KEYS)
    if unknown:
        raise LabdError("bad_request", f"unknown limits {sorted(unknown)} (accepted: {', '.join(LIMIT_KEYS)})",
                        {"field": f"limits.{sorted(unknown)[0]}"})
    action = raw.get("budget_action") or "stop"
    if action not in ("stop", "pause"):
        raise LabdError("bad_limits", "budget_action must be stop or pause")
    try:
        mem, cpu, tmo = raw.get("memory"), raw.get("cpu"), raw.get("timeout")
        memory = _memory(mem)
        cpu_pct = parse_percent(str(cpu), cluster=cluster) if cpu is not None else None
        if cpu_pct is not None and cpu_pct < 1:
            raise LabdError("bad_limits", f"CPU limit {cpu!r} is {cpu_pct:g} % of one core, too little to run; "
                            "the unit is percent (50% = half a core)")
        count = raw.get("procs", None if procs is _NOT_GIVEN else procs)
        if count == "none":  # this session lifts the daemon's default (``--procs none``); JSON null does too
            count = None
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or not 1 <= count <= MAX_PROCS):
            raise LabdError("bad_limits", f"procs must be a whole number of processes (1-{MAX_PROCS}) or \"none\", "
                            f"not {count!r}")
        return {"memory": memory, "cpu": cpu_pct,
                "timeout": _bounded(parse_duration(tmo), "timeout") if isinstance(tmo, str)
                else _positive(tmo, "timeout"),
                "budget": _positive(raw.get("budget"), "budget"), "budget_action": action, "procs": count,
                "output": output_cap(raw.get("output", default_output))}
    except UnitError as exc:
        raise LabdError("bad_limits", str(exc)) from None


def _memory(mem: Any) -> Any:
    if isinstance(mem, str) and mem.strip().isdigit():
        if _digits_over(mem, MAX_LIMIT["memory"]):  # too many bytes, even read as bytes (as 2**64+ arrive)
            raise _beyond(mem, "memory")
        if int(mem) == 0:  # "0M" would be refused too: say what is wrong with it
            raise LabdError("bad_limits", f"memory limit {mem!r} must be positive, e.g. 512M or 2G")
        raise LabdError("bad_limits", f"memory limit {mem!r} has no unit: write e.g. {mem.strip()}M or "
                        f"{mem.strip()}G (a JSON number means bytes)")
    memory = _bounded(_size(mem), "memory") if isinstance(mem, str) else _positive(mem, "memory")
    if memory is not None and memory < MIN_MEMORY:
        given = f"{mem.strip()} ({int(memory)} bytes)" if isinstance(mem, str) else f"{int(memory)} bytes"
        hint = "" if isinstance(mem, str) else "; sizes as text take a unit, e.g. 512M"  # a JSON number: bytes
        raise LabdError("bad_limits", f"memory limit {given} is below what a runner needs to start "
                        f"({MIN_MEMORY // 2**20} MiB){hint}", {"min_bytes": MIN_MEMORY})
    return memory


def output_cap(value: Any) -> int | None:
    """The ``output`` limit (:func:`labd.ipc.units.parse_output_cap`); ``bad_limits`` when it does not parse, and
    ``beyond any machine`` from 16 EiB on (JSON integers end there: the wire sends larger ones as their digits)."""
    try:
        if isinstance(value, str) and _digits_over(value, MAX_JSON_INT):
            raise _beyond_output(value)
        return parse_output_cap(value)
    except BeyondAny:  # a size too large to compute (1e300T), or past MAX_JSON_INT (20000000T: was store_error)
        raise _beyond_output(_bytes_of(value)) from None
    except UnitError as exc:
        raise LabdError("bad_limits", f"output limit: {exc} (a JSON number means bytes)",
                        {"min_bytes": MIN_OUTPUT}) from None


def _bytes_of(value: Any) -> float:
    """The bytes an output limit ``value`` names, for a message (``inf``: too many to compute)."""
    try:
        return parse_size(value) if isinstance(value, str) else value
    except UnitError:
        return math.inf


def _size(text: str) -> float:
    """:func:`parse_size`, with ``inf`` for a size too large to compute (``1e300T``), which :func:`_bounded`
    refuses with the ceiling in its message."""
    try:
        return parse_size(text)
    except BeyondAny:
        return math.inf


def _beyond_output(value: Any) -> LabdError:
    return LabdError("bad_limits", f"output limit of {_shown(value)} bytes is beyond any machine (a limit is under "
                     "16 EiB; \"none\" means no cap)", {"max": MAX_JSON_INT})


def _digits_over(text: str, most: float) -> bool:
    """``text`` is a whole number (digits only) larger than ``most``: too many bytes even read as bytes (how an int
    of 2**64 or more arrives), so not a size that lacks its unit. Never converts thousands of digits."""
    digits, top = text.strip().lstrip("0"), int(most)
    return digits.isascii() and digits.isdigit() and (len(digits) > len(str(top)) or int(digits) > top)


def _shown(value: Any) -> str:
    """A number, or a number's digits, for a message: ``1.18059e+21``; never thousands of digits."""
    try:
        shown = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return "more than 1e308"
    return f"{shown:g}" if math.isfinite(shown) else "more than 1e308"


def _beyond(value: Any, name: str) -> LabdError:
    return LabdError("bad_limits", f"limit {name!r} of {_shown(value)} is beyond any machine or time span (at most "
                     f"{MAX_LIMIT[name]:g})", {"max": MAX_LIMIT[name]})


def _positive(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise LabdError("bad_limits", f"limit {name!r} must be a positive number (of USD)" if name == "budget" else
                        f"limit {name!r} must be a positive number or a string like 512M / 50% / 1h")
    return _bounded(value, name)


def _bounded(value: Any, name: str) -> Any:
    if value is not None and value > MAX_LIMIT[name]:
        raise _beyond(value, name)
    return value
