"""Unit tests for labd.ipc.units: the human units every front-end and the daemon parse the same way."""

from __future__ import annotations

import os

import pytest

from labd.ipc.units import (
    UnitError,
    format_duration,
    format_size,
    parse_cpus,
    parse_duration,
    parse_output_cap,
    parse_percent,
    parse_size,
)

MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize(("text", "value"), [
    ("512M", 512 * MiB), ("512m", 512 * MiB), ("512MB", 512 * MiB), ("512MiB", 512 * MiB),
    ("2G", 2 * GiB), ("2gb", 2 * GiB), ("1.5G", int(1.5 * GiB)), ("64K", 64 * 1024), ("64kib", 64 * 1024),
    ("100B", 100), (" 8M ", 8 * MiB), ("12 MB", 12 * MiB), ("1T", 2**40),
])
def test_parse_size_good(text: str, value: int) -> None:
    """Sizes with a unit (B/K/M/G/T, optional B / iB, any case) parse to bytes."""
    assert parse_size(text) == value


def test_a_bare_number_is_refused_with_the_unit_to_add() -> None:
    """``512`` would be 512 bytes (a session killed at once): refused, and the message says `512M`."""
    with pytest.raises(UnitError, match="add a unit: 512M"):
        parse_size("512")


@pytest.mark.parametrize("text", ["", "M", "abc", "0M", "-1M", "5P", "5KG", "5MBB", "1,5G", "GiB", "nan", "infM"])
def test_parse_size_bad(text: str) -> None:
    """Empty, garbage, non-positive, unknown or doubled units and non-finite values raise UnitError."""
    with pytest.raises(UnitError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0), ("1.5h", 5400.0),
    ("0.5", 0.5), (" 10S ", 10.0), ("1h30m", 5400.0), ("1h 30m", 5400.0), ("2m30s", 150.0), ("500ms", 0.5),
    ("1w", 604800.0), ("10min", 600.0),
])
def test_parse_duration_good(text: str, value: float) -> None:
    """Durations in ms/s/m/h/d/w, compound (1h30m) or not, parse to seconds; a bare number is seconds."""
    assert parse_duration(text) == value


@pytest.mark.parametrize(("text", "says"), [
    ("1M", "is 1M minutes or months"), ("6M", "e.g. 180d"), ("1h30M", "is 30M minutes or months"),
    (" 2 M ", "is 2M minutes"), ("6mo", "months differ in length"), ("3 months", "e.g. 90d"),
])
def test_parse_duration_refuses_what_could_be_months(text: str, says: str) -> None:
    """An upper-case ``M`` (minutes to some, months to others) and month units are refused with the alternatives,
    not read as minutes: a retention of "1M" deleted every session a minute after it ended. ``15MIN`` and ``15m``
    stay minutes."""
    with pytest.raises(UnitError, match=says):
        parse_duration(text)
    assert parse_duration("15MIN") == parse_duration("15m") == 900.0


def test_a_number_without_unit_after_another_part_is_named() -> None:
    """``1h30`` says that the 30 has no unit and suggests ``1h30m`` (it said "unknown unit '(none)'")."""
    with pytest.raises(UnitError, match=r"30 has no unit \(did you mean 1h30m\?\)"):
        parse_duration("1h30")
    with pytest.raises(UnitError, match="30 has no unit .try 90s"):
        parse_duration("30 1h")


@pytest.mark.parametrize("text", ["", "s", "abc", "10x", "0", "0s", "-1m", "1h30", "h1", "nan", "1h-5m"])
def test_parse_duration_bad(text: str) -> None:
    """Garbage, unknown units, a bare number after a unit, and non-positive durations raise UnitError."""
    with pytest.raises(UnitError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [("50%", 50.0), ("50", 50.0), (" 12.5% ", 12.5), ("100", 100.0)])
def test_parse_percent_good(text: str, value: float) -> None:
    """Percent of one core, with or without '%'."""
    assert parse_percent(text) == value


def test_cpu_limits_go_up_to_all_cores_in_either_unit() -> None:
    """The upper bound is 100% per core; --cpus counts cores (0.5 = 50%)."""
    cores = os.cpu_count() or 1
    assert parse_percent(f"{100 * cores}%") == 100.0 * cores
    assert parse_cpus("0.5") == 50.0 and parse_cpus(str(cores)) == 100.0 * cores
    with pytest.raises(UnitError, match="more than 0% and at most"):
        parse_percent(f"{100 * cores + 1}%")
    with pytest.raises(UnitError, match="at most"):
        parse_cpus(str(cores + 1))


def test_a_cluster_session_may_ask_for_more_cpus_than_this_machine_has() -> None:
    """A session on a Ray cluster reserves CPUs on its node, not here: up to MAX_CLUSTER_CPUS cores in either unit
    (README's ``--on ray --cpus 4`` on a 2-core daemon host); locally the bound names ``--on ray``."""
    from labd.ipc.units import MAX_CLUSTER_CPUS

    cores = os.cpu_count() or 1
    assert parse_cpus(str(cores * 4), cluster=True) == 400.0 * cores
    assert parse_percent(f"{400 * cores}%", cluster=True) == 400.0 * cores
    with pytest.raises(UnitError, match="--on ray"):
        parse_cpus(str(cores * 4))
    with pytest.raises(UnitError, match="cluster node"):
        parse_cpus(str(MAX_CLUSTER_CPUS + 1), cluster=True)


@pytest.mark.parametrize("text", ["", "%", "abc", "0", "0%", "-5%", "nan", "inf"])
def test_parse_percent_bad(text: str) -> None:
    """Non-numbers, zero, negatives and non-finite values raise UnitError."""
    with pytest.raises(UnitError, match="bad CPU limit"):
        parse_percent(text)


@pytest.mark.parametrize("text", ["", "half", "0", "-1", "nan", "50%"])
def test_parse_cpus_bad(text: str) -> None:
    """A core count must be a positive finite number."""
    with pytest.raises(UnitError, match="bad CPU count"):
        parse_cpus(text)


def test_formatting_for_people() -> None:
    """Sizes and durations print short, in the units people read."""
    assert format_size(None) == "-" and format_size(512) == "512B" and format_size(512 * MiB) == "512.0M"
    assert format_size(1.5 * GiB) == "1.5G"
    assert format_duration(0.25) == "250ms" and format_duration(42) == "42s" and format_duration(312) == "5m12s"
    assert format_duration(3 * 3600 + 300) == "3h05m" and format_duration(52 * 3600) == "2d04h"


def test_one_output_cap_rule() -> None:
    """The output cap (CLI --max-output, [daemon] max_output, limits.output): bytes or a size with a unit, at least
    1K; "none"/None is no cap; a bare number string, a bool, a float or a tiny cap is refused with a reason."""
    assert parse_output_cap("10M") == 10 * MiB and parse_output_cap(4096) == 4096
    assert parse_output_cap("none") is None and parse_output_cap(" None ") is None and parse_output_cap(None) is None
    for bad, why in (("10", "add a unit"), ("ten", "bad size"), ("100B", "at least 1K"), (True, "at least 1K"),
                     (1.5, "at least 1K"), (-5, "at least 1K"), ([1], "at least 1K")):
        with pytest.raises(UnitError, match=why):
            parse_output_cap(bad)
