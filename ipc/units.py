"""Human units for limits: sizes (``512M``), durations (``1h30m``), CPU as percent (``50%``) or cores (``0.5``).

Public, because the daemon (validating ``session.start`` and config files), the CLI and the SDK all parse
the same strings and must agree on what they mean. Every parser raises :class:`UnitError` (a
``ValueError``) with a message that says what to type instead.
"""

from __future__ import annotations

import math
import os
import re

__all__ = ["UnitError", "BeyondAny", "parse_size", "parse_output_cap", "MIN_OUTPUT", "MAX_OUTPUT", "parse_duration",
           "parse_percent", "parse_cpus", "max_cpu_percent", "MAX_CLUSTER_CPUS",
           "format_size", "format_duration", "format_seconds", "format_limit", "format_over", "shortened"]


class UnitError(ValueError):
    """A value that does not parse; the message says what a good one looks like."""


class BeyondAny(UnitError):
    """A size or duration too large to compute at all (``1e300T``): callers that know their ceiling say it."""


_SIZE_UNITS = {"B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
               "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``100B`` -> bytes (binary multiples).

    A bare number is refused: ``--memory 512`` meant 512 bytes, which kills any session at once, and
    nobody means that. The message suggests the unit (``add a unit: 512M``).
    """
    m = _SIZE.match(text)
    if not m:
        raise UnitError(f"bad size {text!r} (try 512M or 2G)")
    num, unit = m.group(1), m.group(2).upper()
    value = float(num)
    if value == 0:  # checked first: "add a unit: 0M" would suggest a size that is refused in turn
        raise UnitError(f"bad size {text!r}: must be positive (e.g. 512M or 2G)")
    if not unit:
        raise UnitError(f"bad size {text!r}: add a unit: {num}M (or {num}G; B for bytes)")
    if unit not in _SIZE_UNITS:
        raise UnitError(f"bad size {text!r}: unknown unit {m.group(2)!r} (use B, K, M, G or T)")
    if not math.isfinite(value) or value <= 0:
        raise UnitError(f"bad size {text!r}: must be positive")
    size = value * _SIZE_UNITS[unit]
    if not math.isfinite(size):  # 1e300T: past what a float holds, let alone a machine
        raise BeyondAny(f"bad size {text!r}: beyond any machine")
    return int(size)


_DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_MONTHS = ("mo", "mon", "mos", "month", "months")  # no fixed length: refused, with days suggested
_CAPITAL_M = re.compile(r"([0-9]*\.?[0-9]+)\s*M(?![A-Za-z])")  # "6M": minutes or months? refused
_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", re.IGNORECASE)


#: an output cap below this would truncate the first traceback
MIN_OUTPUT = 1024
#: the largest output cap (16 EiB - 1): a JSON integer (the cap is recorded in ``session.created``) is no larger
MAX_OUTPUT = 2**64 - 1


def parse_output_cap(value: object) -> int | None:
    """A session's output cap (``limits.output``, ``--max-output``, ``[daemon] max_output``) -> bytes, or None
    for no cap (``None``, ``"none"``). Bytes as an integer, or a size string (``"10M"``; a bare number string is
    refused, as by :func:`parse_size`); at least :data:`MIN_OUTPUT`, at most :data:`MAX_OUTPUT` (more is
    :class:`BeyondAny`). The one parser of the rule, so the CLI, the config file and the daemon's API accept and
    refuse the same values."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str):
        value = parse_size(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_OUTPUT:
        raise UnitError(f"output cap {value!r} must be a size of at least {MIN_OUTPUT // 1024}K "
                        "(e.g. 10M, 1G) or \"none\"")
    if value > MAX_OUTPUT:  # recorded, it was a value the store refused: every start answered store_error
        shown = f"{value:.6g}" if value.bit_length() < 1000 else "more than 1e300"
        raise BeyondAny(f"output cap of {shown} bytes is beyond any machine (under 16 EiB; \"none\": no cap)")
    return value


def _months_hint(num: str) -> str:
    try:
        return f"{round(float(num) * 30):d}d"
    except (ValueError, OverflowError):
        return "180d"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h30m``, ``1h 30m``, ``1.5h``, ``2d``, ``500ms`` -> seconds (bare: seconds).

    Units are read case-blind, except an upper-case ``M``, which is refused (:class:`UnitError`): people write it
    for months as often as for minutes."""
    capital = _CAPITAL_M.search(text)
    if capital:  # a slip here can delete records: a retention of "6M" deleted every session a minute after it ended
        num = capital.group(1)
        raise UnitError(f"bad duration {text!r}: is {num}M minutes or months? write {num}m or {num}min for minutes, "
                        f"days for months (e.g. {_months_hint(num)})")
    t = text.strip().lower()
    pos, total, parts = 0, 0.0, 0
    hint = "(try 90s, 15m, 1h30m or 2d)"
    while pos < len(t):
        m = _DURATION_PART.match(t, pos)
        if not m:
            raise UnitError(f"bad duration {text!r} {hint}")
        num, unit = m.group(1), m.group(2)
        if unit in _MONTHS:
            raise UnitError(f"bad duration {text!r}: months differ in length: write days (e.g. {_months_hint(num)})")
        if unit == "" and not (pos == 0 and m.end() == len(t)):  # "1h30": the 30 of what?
            last = m.end() == len(t)
            raise UnitError(f"bad duration {text!r}: {num} has no unit" + (f" (did you mean {text.strip()}m?)" if last
                                                                            else f" {hint}"))
        if unit not in _DURATION_UNITS and unit != "":
            raise UnitError(f"bad duration {text!r}: unknown unit {unit!r} {hint}")
        total += float(num) * _DURATION_UNITS.get(unit, 1)
        parts += 1
        pos = m.end()
        while pos < len(t) and t[pos] == " ":
            pos += 1
    if not parts:
        raise UnitError(f"bad duration {text!r} {hint}")
    if math.isnan(total) or total <= 0:
        raise UnitError(f"bad duration {text!r}: must be positive")
    if not math.isfinite(total):  # digits past what a float holds
        raise BeyondAny(f"bad duration {text!r}: beyond any time span")
    return total


#: the most CPUs a session on a Ray cluster may ask for (its node has them, not this machine; as ``--gpus``)
MAX_CLUSTER_CPUS = 1024


def max_cpu_percent(cluster: bool = False) -> float:
    """The most CPU a session can use: 100 % per core of this machine; with ``cluster`` (a session on a Ray
    cluster, whose CPUs Ray reserves on its node) of :data:`MAX_CLUSTER_CPUS` cores."""
    return 100.0 * (MAX_CLUSTER_CPUS if cluster else (os.cpu_count() or 1))


def _cpu_bound(text: str, value: float, cluster: bool, percent: bool) -> None:
    """Refuse ``value`` (percent of one core) beyond what a session can have, saying it in the unit given."""
    top = max_cpu_percent(cluster)
    if not math.isfinite(value) or not 0 < value <= top:
        where = "on a cluster node" if cluster else "here; on a Ray cluster: --on ray"
        bound = f"0% and at most {top:g}% ({top / 100:g} cores {where})" if percent else \
            f"0 and at most {top / 100:g} (cores {where})"
        raise UnitError(f"bad CPU {'limit' if percent else 'count'} {text!r}: must be more than {bound}")


def parse_percent(text: str, *, cluster: bool = False) -> float:
    """``50%`` or ``50`` -> 50.0: percent of one core (200 means two cores), up to all cores
    (:func:`max_cpu_percent`)."""
    t = text.strip()
    num = t[:-1].strip() if t.endswith("%") else t
    try:
        value = float(num)
    except ValueError:
        raise UnitError(f"bad CPU limit {text!r} (try 50% of one core, or --cpus 0.5)") from None
    _cpu_bound(text, value, cluster, percent=True)
    return value


def parse_cpus(text: str, *, cluster: bool = False) -> float:
    """``0.5`` (cores, as docker's ``--cpus``) -> 50.0 percent of one core, up to all cores
    (:func:`max_cpu_percent`)."""
    try:
        cores = float(text.strip())
    except ValueError:
        raise UnitError(f"bad CPU count {text!r} (a number of cores, e.g. 0.5 or 2)") from None
    _cpu_bound(text, cores * 100.0, cluster, percent=False)
    return cores * 100.0


def format_size(n: float | None) -> str:
    """Bytes for people: ``512.0M``, ``1.5G``; ``-`` for nothing."""
    if not n:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def format_duration(seconds: float | None) -> str:
    """Seconds for people, two units at most: ``850ms``, ``42s``, ``5m12s``, ``3h05m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def format_seconds(seconds: float) -> str:
    """A limit or a measurement in seconds, readable however small: ``1 ms``, ``40 ms``, ``0.5 ms``, then ``42 s``,
    ``61.04 s``, ``2.003 s`` (to the millisecond, no trailing zeros). (``0.00 s`` said nothing of a 1 ms
    limit.)"""
    s = max(0.0, float(seconds))
    if s == 0:
        return "0 s"
    ms = s * 1000
    if ms < 999.5:  # 999.5 ms and up round to "1e+03" in 3 digits: they read "1 s"
        text = f"{ms:.3g}"
        return (f"{ms:.9f}".rstrip("0").rstrip(".") if "e" in text else text) + " ms"  # 2e-05 ms: 0.00002 ms
    return f"{s:.3f}".rstrip("0").rstrip(".") + " s"  # 2.003 s > limit 2 s (not "2.00 s > limit 2 s")


def format_limit(value: float, unit: str) -> str:
    """A limit's value (or what was measured against it) in its unit, as a session's reason and the activity lines
    say it (``limit.exceeded``: ``memory 124 MiB > limit 100 MiB``, ``wall time 1.2 s > limit 1 ms``)."""
    if unit == "bytes":
        mib = value / 2**20
        return f"{mib:.0f} MiB" if mib >= 10 else f"{mib:.3g} MiB" if mib >= 0.1 else f"{value / 1024:.3g} KiB"
    if unit == "seconds":
        return format_seconds(value)
    if unit == "percent":
        return f"{value:.3g} %" if value < 10 else f"{value:.0f} %"
    if unit == "processes":
        return f"{value:g}"
    if unit == "USD":
        return f"${value:.6f}"
    return f"{value:g} {unit}"


def format_over(measured: float, top: float, unit: str) -> tuple[str, str]:
    """``measured`` and the limit ``top`` it passed, each as :func:`format_limit` says it, but with as many more
    digits of ``measured`` as it takes to tell them apart (``memory 100.4 MiB > limit 100 MiB``, not ``100 MiB >
    limit 100 MiB``)."""
    said, limit = format_limit(measured, unit), format_limit(top, unit)
    scale = {"bytes": (2**20, " MiB"), "percent": (1, " %"), "seconds": (1, " s")}.get(unit)
    if said != limit or not measured > top or scale is None or (unit == "seconds" and not 1 <= top < 86400):
        return said, limit  # (seconds: only as plain seconds, the way format_seconds says 1 s to a day)
    for digits in range(1, 10):
        said = f"{measured / scale[0]:.{digits}f}".rstrip("0").rstrip(".") + scale[1]
        if said != limit:
            break
    return said, limit


def shortened(default: float, var: str, floor: float = 0.0) -> float:
    """``default`` seconds, or the environment variable ``var`` when it is a number: a test's override that can only
    shorten a wait (clamped to ``floor`` .. ``default``), so that a test of what happens once it has passed need not
    wait the whole of it."""
    try:
        return max(floor, min(default, float(os.environ[var])))
    except (KeyError, ValueError):
        return default
