"""Messages about limits and the words `labd show` / `labd ps` use: each says what is true and what to type, and
an option given empty is an error rather than "no limit". Also the pieces of the fixes that need no daemon: the
search query bound, the runner's check of its ``session.finished`` size."""

from __future__ import annotations

import argparse

import pytest

from labd.frontends.cli.base import CliError
from labd.frontends.cli.listing import _limits_text
from labd.frontends.cli.sessions import limits_from
from labd.ipc.units import UnitError, parse_percent, parse_size

# the names these fixes add are imported in the tests that use them: on the old code each test fails on its own


def _args(**given: object) -> argparse.Namespace:
    base: dict[str, object] = {"memory": None, "cpu": None, "cpus": None, "timeout": None, "budget": None,
                               "on_budget": None, "max_output": None}
    return argparse.Namespace(**{**base, **given})


@pytest.mark.parametrize("text", ["0", "0M", "0.0G"])
def test_a_zero_size_is_refused_as_such_not_with_a_unit_to_add(text: str) -> None:
    """`--memory 0` said "add a unit: 0M", which is refused in turn: a zero size says it must be positive."""
    with pytest.raises(UnitError) as err:
        parse_size(text)
    assert "must be positive" in str(err.value) and "add a unit" not in str(err.value)


def test_a_zero_cpu_percent_says_more_than_zero() -> None:
    """`--cpu 0%` said "must be between 0 and 200%" (0 is between them): it says more than 0%."""
    with pytest.raises(UnitError, match=r"must be more than 0% and at most") as err:
        parse_percent("0%")
    assert "between" not in str(err.value)


@pytest.mark.parametrize(("seconds", "text"), [(0.001, "1 ms"), (0.04, "40 ms"), (0.0005, "0.5 ms"), (1.5, "1.5 s"),
                                               (2.003, "2.003 s"), (42, "42 s"), (90, "90 s"), (61.04, "61.04 s"),
                                               (0, "0 s")])
def test_small_durations_are_readable(seconds: float, text: str) -> None:
    """A 1 ms limit read "0.00 s": seconds are written in ms below one second."""
    from labd.ipc.units import format_limit, format_seconds

    assert format_seconds(seconds) == text
    assert format_limit(seconds, "seconds") == text


def test_limit_values_in_their_units() -> None:
    """format_limit keeps the words `labd show` used (`150 MiB`, `$0.000500`) and says small sizes readably."""
    from labd.ipc.units import format_limit

    assert format_limit(150 * 2**20, "bytes") == "150 MiB"
    assert format_limit(300 * 1024, "bytes") == "0.293 MiB" and format_limit(1000, "bytes") == "0.977 KiB"
    assert format_limit(0.5, "percent") == "0.5 %" and format_limit(250, "percent") == "250 %"
    assert format_limit(0.0005, "USD") == "$0.000500" and format_limit(64, "processes") == "64"


@pytest.mark.parametrize("option", ["memory", "cpu", "cpus", "timeout", "max_output"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_limit_option_is_an_error_not_no_limit(option: str, value: str) -> None:
    """`--memory ""` (an unset shell variable) gave an unlimited session silently: every limit option given empty
    is refused, naming the option."""
    with pytest.raises(CliError, match=f"--{option.replace('_', '-')} needs a value"):
        limits_from(_args(**{option: value}))


def test_limit_options_still_parse() -> None:
    """Given values are parsed as before; absent ones are None (no limit)."""
    lim = limits_from(_args(memory="512M", cpus="0.5", timeout="1ms"))
    assert lim["memory"] == 512 * 2**20 and lim["cpu"] == 50.0 and lim["timeout"] == 0.001
    assert limits_from(_args())["memory"] is None


def test_show_names_the_procs_limit() -> None:
    """`labd show`'s limits line includes the process-count limit (stored and enforced, but never shown)."""
    text = _limits_text({"memory": None, "cpu": None, "timeout": 0.001, "procs": 64, "output": 2**30})
    assert "procs 64" in text and "timeout 1ms" in text


def test_ps_status_of_queued_sessions() -> None:
    """A queued session's STATUS cell is its place in the queue, with its priority when the row carries one."""
    from labd.frontends.cli.listing import ps_status

    assert ps_status({"status": "queued", "queue_position": 2}) == "queued #2"
    assert ps_status({"status": "queued", "queue_position": 1, "queue_priority": 5}) == "queued #1 prio 5"
    assert ps_status({"status": "running", "queue_position": None}) == "running"


def _row(status: str, **kw: object) -> dict[str, object]:
    return {"status": status, "created_at": 1000.0, "started_at": None, "ended_at": None, "history": [], **kw}


def test_timing_text_gives_run_time_only_to_sessions_that_ran() -> None:
    """`labd show`: a queued session is `queued for`, one stopped while queued `never ran`, a resumed one queued
    again says so and one stopped then `never ran again`; only a started runner makes `ran`."""
    from labd.frontends.cli.listing import timing_text

    now = 1017.0
    assert timing_text(_row("queued"), now) == "queued for 17s"
    assert timing_text(_row("cancelled", ended_at=1017.0), now) == "never ran (ended 17s after it was created)"
    assert timing_text(_row("running", started_at=1010.0), now) == "ran 7.0s"
    assert timing_text(_row("completed", started_at=1001.0, ended_at=1003.5), now) == "ran 2.5s"
    history = [{"node_id": None, "to_status": "queued", "ts": 1010.0}]
    again = timing_text(_row("queued", started_at=1001.0, history=history), now)
    assert again == "queued for 7.0s (again: it ran before)"
    assert timing_text(_row("cancelled", started_at=1001.0, ended_at=1012.0, history=history),
                       now) == "never ran again (ended 2.0s after it was queued again)"


def test_the_index_refuses_more_than_twenty_search_words() -> None:
    """Words are counted case aside, each once; the index refuses more than 20 rather than dropping the 21st on
    (the one check: the daemon answers it ``bad_request``, tests/integration/test_show_and_search.py)."""
    from labd.store.search import MAX_WORDS, QueryTooLong, _fts_query, query_words

    assert MAX_WORDS == 20
    assert query_words("Alpha alpha beta ALPHA") == ["Alpha", "beta"]
    assert _fts_query(" ".join(f"w{i}" for i in range(20))).count('"*') == 20
    with pytest.raises(QueryTooLong, match="at most 20"):
        _fts_query(" ".join(f"w{i}" for i in range(21)))


def test_finished_payload_keeps_the_outcome_when_the_result_is_too_large() -> None:
    """The runner's session.finished: whole when it fits one event; a completed session's result over it is left
    out with its size and the limit stated; a failed session's long error is cut, the outcome kept."""
    from labd.runner.session import finished_payload

    assert finished_payload("completed", {"result": "x" * 100}, 4096) == {"outcome": "completed", "result": "x" * 100}
    out = finished_payload("completed", {"result": "x" * 10_000}, 4096)
    assert out["outcome"] == "completed" and "result" not in out
    assert out["error"].startswith("result not recorded: too large (10,0") and "at most 4,096 bytes" in out["error"]
    whole = {"error": "E" * 100_000, "traceback": "T" * 100_000}
    assert finished_payload("failed", whole, 1 << 20) == {"outcome": "failed", **whole}  # fits: kept whole
    failed = finished_payload("failed", whole, 64 * 1024)
    assert failed["outcome"] == "failed" and failed["error"].startswith("E" * 4096 + "... [95,904 more characters]")
    assert failed["traceback"].startswith("T" * 4096 + "...")


def test_the_channel_keeps_the_outcome_of_a_session_finished_it_cannot_send() -> None:
    """The channel's backstop (what the runner's own check could not foresee): a ``session.finished`` too large for
    one message is replaced by a ``session.finished`` with the same outcome and the reason, not an
    ``event.truncated`` marker that left the session without an outcome (failed, "runner exited ... before
    reporting an outcome"); a failed one keeps the start of its error. Other kinds still become the marker."""
    import orjson

    from labd.runner.channel import Channel

    def shrunk(kind: str, payload: dict) -> list:
        raw = orjson.dumps([7, 0.0, kind, None, None, payload])
        ch = Channel("ipc:///nonexistent", b"k" * 32, "s1")
        ch._codec.max_message = 10_000  # noqa: SLF001 - exercising the limit without a 16 MiB payload
        ch._q, ch._times = [raw], [0.0]  # noqa: SLF001
        ch._shrink(0, [raw])  # noqa: SLF001
        return orjson.loads(ch._q[0])  # type: ignore[no-any-return]  # noqa: SLF001

    done = shrunk("session.finished", {"outcome": "completed", "result": "x" * 20_000})
    assert done[:3] == [7, 0.0, "session.finished"] and done[5]["outcome"] == "completed" and "result" not in done[5]
    assert done[5]["error"].startswith("result not recorded: too large (20,0") and "at most 9," in done[5]["error"]
    failed = shrunk("session.finished", {"outcome": "failed", "error": "E" * 20_000})
    assert failed[5]["outcome"] == "failed" and failed[5]["error"].startswith("E" * 512 + "... [the rest not recorded")
    other = shrunk("custom", {"data": "x" * 20_000})
    assert other[2] == "event.truncated" and other[5]["kind"] == "custom"


def test_a_zero_memory_limit_over_the_protocol_is_called_not_positive() -> None:
    """``limits.memory = "0"`` sent by any client is refused ``bad_limits`` as not positive; it was told to "write
    0M", which is refused too."""
    from labd.daemon.api.base import ApiError
    from labd.daemon.api.sessions import _limits

    with pytest.raises(ApiError) as err:
        _limits({"limits": {"memory": "0"}})
    assert err.value.code == "bad_limits" and "must be positive" in err.value.message and "0M" not in err.value.message


def test_limit_values_at_their_unit_boundaries() -> None:
    """Where format_limit changes its form: 10 MiB and up whole, 0.1 MiB and up in 3 digits, below in KiB; percent
    whole from 10 %; a negative measured time reads 0 s (a clock step), never "-0.5 ms"; 0.9995 s reads "1 s", and
    a tiny one in plain digits (both were exponents: "1e+03 ms"); a unit it does not know
    is written after the value."""
    from labd.ipc.units import format_limit, format_seconds

    assert format_limit(10 * 2**20, "bytes") == "10 MiB" and format_limit(9.5 * 2**20, "bytes") == "9.5 MiB"
    assert format_limit(0.1 * 2**20, "bytes") == "0.1 MiB" and format_limit(0.09 * 2**20, "bytes") == "92.2 KiB"
    assert format_limit(10, "percent") == "10 %" and format_limit(9.99, "percent") == "9.99 %"
    assert format_seconds(-0.5) == "0 s" and format_seconds(1) == "1 s" and format_seconds(0.9995) == "1 s"
    assert format_seconds(0.99949) == "999 ms" and format_seconds(2e-8) == "0.00002 ms"
    assert format_limit(3, "gpus") == "3 gpus"


def test_a_test_override_can_only_shorten_a_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """``shortened``: the environment's value when it is a number between the floor and the default; never longer
    than the default (a stray variable cannot make a deadline longer), never under the floor, and the default when
    it is unset or not a number."""
    from labd.ipc.units import shortened

    monkeypatch.delenv("LABD_T_WAIT", raising=False)
    assert shortened(10.0, "LABD_T_WAIT", floor=0.5) == 10.0
    for given, expected in (("3", 3.0), ("60", 10.0), ("0.1", 0.5), ("-5", 0.5), ("soon", 10.0), ("", 10.0)):
        monkeypatch.setenv("LABD_T_WAIT", given)
        assert shortened(10.0, "LABD_T_WAIT", floor=0.5) == expected, given


def test_labd_show_shortens_huge_params_and_says_where_they_are_whole() -> None:
    """``labd show``'s params line: the params as JSON when short; a 5 MB ``label`` (an SDK start may send one) is cut
    to its first 1,000 characters, saying how long it is and that ``labd show --json`` has it whole; it printed every
    character."""
    from labd.frontends.cli.listing import params_text

    assert params_text({"n": 3, "label": "x"}) == '{"n": 3, "label": "x"}'
    long = params_text({"label": "x" * 5_000_000})
    assert long == '{"label": "' + "x" * 989 + "... (5,000,013 characters; labd show --json: all)", long[-80:]


def test_a_breach_just_past_its_limit_reads_as_one() -> None:
    """A memory kill at 100.4 MiB against a 100 MiB limit read "memory 100 MiB > limit 100 MiB": the measured
    side gets the digits it needs to differ, the limit stays as given; a wide breach is said as before."""
    from labd.ipc.units import format_over

    assert format_over(100.4 * 2**20, 100 * 2**20, "bytes") == ("100.4 MiB", "100 MiB")
    assert format_over(100 * 2**20 + 5, 100 * 2**20, "bytes") == ("100.000005 MiB", "100 MiB")
    assert format_over(124 * 2**20, 100 * 2**20, "bytes") == ("124 MiB", "100 MiB")
    assert format_over(100.3, 100, "percent") == ("100.3 %", "100 %")
    assert format_over(2.0004, 2, "seconds") == ("2.0004 s", "2 s")
    assert format_over(2.5, 2, "seconds") == ("2.5 s", "2 s")


@pytest.mark.parametrize("budget", ["1", "$5", True, -2])
def test_a_budget_that_is_no_number_is_told_it_takes_usd_not_a_unit(budget: object) -> None:
    """``limits.budget`` of ``"1"`` was told "a positive number or a string like 512M / 50% / 1h", but a budget takes
    no unit: the message now says a positive number of USD; the other limits keep theirs."""
    from labd.ipc import LabdError
    from labd.ipc.limits import check_limits

    with pytest.raises(LabdError) as err:
        check_limits({"budget": budget})
    assert err.value.code == "bad_limits" and err.value.message == "limit 'budget' must be a positive number (of USD)"
    with pytest.raises(LabdError, match="or a string like 512M"):
        check_limits({"timeout": -1})
