"""Bad input met where it is first read gets one clear error, never a traceback (each found by an exploratory test):
a home that cannot be a directory, config and policy files that are not UTF-8, sizes too large for any machine (or
for a JSON integer), and SDK timeouts that are NaN or negative."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.api.base import ApiError
from labd.daemon.config import ConfigError, load_config
from labd.frontends.cli.base import CliError
from labd.ipc.client import Client, LabdError
from labd.ipc.paths import UnsafeRuntimeDir, layout_for
from labd.ipc.policy import PolicyError
from labd.ipc.policy_rules import load_file

pytestmark = pytest.mark.timeout(30)

NOT_UTF8 = b"[daemon]\n# caf\xe9\n"  # latin-1 "é" on line 2


# ---- 1. a home that cannot be a directory ----------------------------------------------------------------------

def test_a_home_that_is_a_file_is_refused_naming_it(tmp_path: Path) -> None:
    """Layout.ensure() (the daemon's start) on a home that is a regular file raises the one-line refusal `labd serve`
    already prints for a bad runtime directory (an UnsafeRuntimeDir), naming the home and that it is a file; before:
    FileExistsError from mkdir, a traceback."""
    home = tmp_path / "x"
    home.write_text("not a directory")
    with pytest.raises(UnsafeRuntimeDir) as err:
        layout_for(home).ensure()
    assert str(err.value) == f"cannot use {home} as labd's home: it is a file"


def test_a_home_below_a_file_or_with_a_file_for_sessions_names_the_file(tmp_path: Path) -> None:
    """A home whose parent is a file names that parent; a home whose sessions directory is a file names that file
    (before: NotADirectoryError / FileExistsError tracebacks)."""
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(UnsafeRuntimeDir) as err:
        layout_for(blocker / "h").ensure()
    assert str(err.value) == f"cannot use {blocker}/h as labd's home: {blocker} is a file"
    home = tmp_path / "h2"
    home.mkdir()
    (home / "sessions").write_text("")
    with pytest.raises(UnsafeRuntimeDir) as err:
        layout_for(home).ensure()
    assert str(err.value) == f"cannot use {home} as labd's home: {home}/sessions is a file"


def test_a_home_that_cannot_be_created_gives_the_reason(tmp_path: Path) -> None:
    """A home that cannot be created (/proc makes no new directories: ENOENT, or EACCES for a non-root user) says
    `cannot create it` with the system's reason (strerror); before: a FileNotFoundError traceback. A good home is
    still created, with its sessions directory."""
    home = Path("/proc/1/labd-test-home")
    with pytest.raises(UnsafeRuntimeDir) as err:
        layout_for(home).ensure()
    said = str(err.value)
    assert said.startswith(f"cannot use {home} as labd's home: cannot create it: "), said
    assert re.fullmatch(r"[A-Z][a-z ]+", said.rpartition(": ")[2]), said  # strerror, e.g. No such file or directory
    fine = tmp_path / "new" / "home"
    layout_for(fine).ensure()
    assert (fine / "sessions").is_dir()


# ---- 2. a config.toml that is not UTF-8 ------------------------------------------------------------------------

def test_config_that_is_not_utf8_is_a_config_error_like_a_syntax_error(tmp_path: Path) -> None:
    """load_config on a home whose config.toml is not UTF-8 raises ConfigError `cannot read PATH: ...` (as a TOML
    syntax error does) saying which byte on which line; before: UnicodeDecodeError, a traceback from `labd serve`."""
    home = tmp_path / "h"
    home.mkdir()
    cfg = home / "config.toml"
    cfg.write_bytes(b"[daemon\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(f'cannot read {cfg}: Expected')}"):
        load_config(home)
    cfg.write_bytes(NOT_UTF8)
    with pytest.raises(ConfigError) as err:
        load_config(home)
    assert str(err.value) == f"cannot read {cfg}: not UTF-8 text: byte 0xe9 on line 2 (TOML files are UTF-8)"


def test_config_in_utf8_with_non_ascii_text_still_loads(tmp_path: Path) -> None:
    """UTF-8 text beyond ASCII (a comment, a value) reads as before."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text('[daemon]\n# café\nsecret_env = ["CLÉ"]\n', encoding="utf-8")
    assert load_config(home).secret_env == ["CLÉ"]


# ---- 3. a policy file that is not UTF-8 ------------------------------------------------------------------------

def test_policy_file_that_is_not_utf8_is_a_policy_error_like_a_syntax_error(tmp_path: Path) -> None:
    """policy_rules.load_file (what `labd run --policy` and `labd policy check` read files with) raises PolicyError
    `PATH: not valid TOML: ...` for a non-UTF-8 file, as for a syntax error; before: UnicodeDecodeError."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[[policy\n")
    with pytest.raises(PolicyError, match=f"^{re.escape(f'{bad}: not valid TOML: Expected')}"):
        load_file(bad)
    bad.write_bytes(b'[[policy]]\nname = "x"\n\xff\xfe\n')
    with pytest.raises(PolicyError) as err:
        load_file(bad)
    assert err.value.message == f"{bad}: not valid TOML: not UTF-8 text: byte 0xff on line 3 (TOML files are UTF-8)"
    bad.write_text('[[policy]]\nname = "é"\neffect = "deny"\nmatch = {action = "code"}\n', encoding="utf-8")
    assert load_file(bad)[0]["name"] == "é"  # UTF-8 reads as before


def test_cli_read_policy_turns_a_non_utf8_file_into_a_cli_error(tmp_path: Path) -> None:
    """`labd run --policy FILE` checks the file with read_policy: a CliError (one line, exit 2), not a traceback."""
    from labd.frontends.cli.sessions import read_policy

    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe\n")
    with pytest.raises(CliError, match="not valid TOML: not UTF-8 text: byte 0xff on line 1"):
        read_policy(str(bad))


# ---- 4. sizes beyond any machine -------------------------------------------------------------------------------

def _flags(**given: Any) -> argparse.Namespace:
    base = {"memory": None, "cpu": None, "cpus": None, "timeout": None, "budget": None, "on_budget": "stop",
            "max_output": None}
    return argparse.Namespace(**{**base, **given})


@pytest.mark.parametrize("size", ["1e99M", "99999999999999999999999G", "1e300T", "1025T"])
def test_cli_memory_beyond_any_machine_is_said_before_the_daemon(size: str) -> None:
    """`--memory` larger than the daemon's 1 PiB ceiling (or too large to compute, 1e300T) is refused by the CLI's
    limits_from as `beyond any machine`; before: passed on (sizes of 2**64 and more then came back as `has no
    unit`, 1e300T was an OverflowError traceback)."""
    from labd.frontends.cli.sessions import limits_from

    with pytest.raises(CliError, match=rf"^--memory: bad size '{size}': beyond any machine \(at most 1024T, 1 PiB\)$"):
        limits_from(_flags(memory=size))


def test_cli_memory_up_to_the_ceiling_is_kept() -> None:
    """1024T (the ceiling itself) and ordinary sizes are bytes, as before; the CLI's ceiling is the daemon's."""
    from labd.frontends.cli.sessions import MAX_MEMORY, limits_from
    from labd.ipc.limits import MAX_LIMIT

    assert MAX_LIMIT["memory"] == MAX_MEMORY
    assert limits_from(_flags(memory="1024T"))["memory"] == 2**50
    assert limits_from(_flags(memory="512M"))["memory"] == 512 * 2**20


@pytest.mark.parametrize("size", ["999999999999999T", "16777216T", "1e300T"])
def test_cli_max_output_beyond_any_machine(size: str) -> None:
    """`--max-output` of 16 EiB (2**64 bytes, beyond a JSON integer) or more is `beyond any machine`; before: the
    daemon answered `add a unit` (or OverflowError for 1e300T). Smaller caps and `none` pass as before."""
    from labd.frontends.cli.sessions import limits_from, max_output_arg

    with pytest.raises(CliError, match=rf"^--max-output: bad size '{size}': beyond any machine \(under 16 EiB"):
        limits_from(_flags(max_output=size))
    assert max_output_arg("16777215T") == 16777215 * 2**40
    assert max_output_arg("none") == "none" and max_output_arg("10M") == 10 * 2**20


def test_procs_none_lifts_the_default_and_bad_procs_are_refused() -> None:
    """``--procs none`` (CLI) and ``"procs": "none"`` (API) run a session without the daemon's default process
    limit; a number is kept; anything else is refused, by argparse before the daemon or ``bad_limits`` by it."""
    from labd.daemon.api.sessions import _limits
    from labd.frontends.cli.sessions import procs_arg

    assert procs_arg("none") == "none" and procs_arg(" None ") == "none" and procs_arg("50") == 50
    assert procs_arg("0") == "none"  # as the config's procs = 0: it was refused by the daemon (bad_limits)
    with pytest.raises(argparse.ArgumentTypeError, match="a whole number of processes or none"):
        procs_arg("lots")
    assert _limits({"limits": {"procs": "none"}}, default_procs=256).procs is None
    assert _limits({"limits": {"procs": None}}, default_procs=256).procs is None
    assert _limits({"limits": {}}, default_procs=256).procs == 256
    assert _limits({"limits": {"procs": 7}}, default_procs=256).procs == 7
    for bad in ("nothing", 0, -1, 1.5, True):
        with pytest.raises(ApiError, match="procs must be"):
            _limits({"limits": {"procs": bad}}, default_procs=256)


def _limits(limits: dict[str, Any]) -> Any:
    from labd.daemon.api.sessions import _limits

    return _limits({"limits": limits})


@pytest.mark.parametrize("memory", [str(2**70), "9" * 5000, "1e300T"])
def test_daemon_memory_beyond_any_machine(memory: str) -> None:
    """The daemon's limit check: a string of digits beyond 1 PiB is a number of bytes (how the wire sends an int
    of 2**64 or more, e.g. Client.start(memory=2**70)), so `beyond any machine`, not `has no unit`; 1e300T too
    (before: an internal error). Short digit strings still lack their unit; 1024T is still the ceiling."""
    with pytest.raises(ApiError) as err:
        _limits({"memory": memory})
    assert err.value.code == "bad_limits" and "is beyond any machine" in err.value.message, err.value.message
    with pytest.raises(ApiError, match="has no unit"):
        _limits({"memory": "512"})
    assert _limits({"memory": "1024T"}).memory == 2**50


@pytest.mark.parametrize("output", [str(2**64), str(10**30), "1e300T"])
def test_daemon_output_cap_beyond_any_machine(output: str) -> None:
    """An output cap arriving as digits of 2**64 or more (an int JSON cannot carry), or too large to compute, is
    `beyond any machine`; before: `add a unit` (or an internal error). 2**64 - 1 as a number is still a cap."""
    with pytest.raises(ApiError) as err:
        _limits({"output": output})
    assert err.value.code == "bad_limits" and "is beyond any machine" in err.value.message, err.value.message
    assert _limits({"output": 2**64 - 1}).output == 2**64 - 1
    with pytest.raises(ApiError, match="add a unit"):
        _limits({"output": "512"})


@pytest.mark.parametrize("output", ["16777216T", "20000000T", "1e9T", 2**64, 10**23])
def test_output_cap_with_a_unit_past_a_json_integer_is_beyond_any_machine(output: Any, tmp_path: Path) -> None:
    """An output cap with a unit that comes to 2**64 bytes or more (``limits.output = "20000000T"`` from any client),
    or such a ``[daemon] max_output`` (a size or an integer), is refused as `beyond any machine`: by the daemon's
    limit check (``bad_limits``, the bytes in the message) and by the config file's (``ConfigError``). Before, the
    cap passed both checks and made ``session.created`` a value the store refused: the start was answered
    ``store_error`` after a runner was launched and killed, and with such a ``max_output`` every start was."""
    from labd.ipc.units import BeyondAny, parse_output_cap

    with pytest.raises(BeyondAny, match="beyond any machine"):
        parse_output_cap(output)
    with pytest.raises(ApiError) as err:
        _limits({"output": output})
    assert err.value.code == "bad_limits" and "is beyond any machine" in err.value.message, err.value.message
    assert "more than 1e308" not in err.value.message  # the bytes asked for
    setting = output if isinstance(output, int) else repr(output)
    (tmp_path / "config.toml").write_text(f"[daemon]\nmax_output = {setting}\n")
    with pytest.raises(ConfigError, match="max_output: .*beyond any machine"):
        load_config(tmp_path)
    assert parse_output_cap("16777215T") == 16777215 * 2**40 and parse_output_cap(2**64 - 1) == 2**64 - 1


# ---- 5. SDK timeouts -------------------------------------------------------------------------------------------

BAD_TIMEOUTS = [math.nan, -1, -0.5, -math.inf, True, "5"]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_client_refuses_a_bad_timeout_before_connecting(timeout: Any) -> None:
    """Client(timeout=NaN/negative/not a number) is a ValueError before the connection file is read (no daemon
    runs here: before, it said no_daemon; with a daemon, NaN never timed out and -1 timed out at once)."""
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        Client(timeout=timeout)
    with pytest.raises(LabdError):  # a good timeout: on to the connection file (there is no daemon)
        Client(timeout=0.5)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_wait_for_daemon_refuses_a_bad_timeout(timeout: Any, tmp_path: Path) -> None:
    """labd.ipc.ready.wait_for_daemon (what `labd wait` and `serve --detach` use) with a NaN timeout waited for ever
    for a daemon that never comes; every bad timeout is the SDK's ValueError, before any waiting."""
    from labd.ipc.ready import wait_for_daemon

    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        wait_for_daemon(tmp_path / "nohome", timeout=timeout)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
@pytest.mark.parametrize("method", ["wait", "follow", "result"])
def test_wait_follow_result_refuse_a_bad_timeout_before_reading_anything(method: str, timeout: Any) -> None:
    """wait/follow/result with timeout NaN (it never ran out), negative (it ran out at once: `did not end within
    -1s`) or not a number raise ValueError at the call, before any request (this client has no connection at all);
    follow too, though it returns an iterator."""
    c = Client.__new__(Client)  # not connected: a request would fail with AttributeError
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        getattr(c, method)("some-session", timeout=timeout)


def test_check_timeout_accepts_seconds_and_reads_infinity_as_no_limit() -> None:
    """The one check: 0 and positive numbers are seconds; None and math.inf mean no limit (None)."""
    from labd.ipc.client import check_timeout

    assert check_timeout(0) == 0.0 and check_timeout(2) == 2.0 and check_timeout(0.25) == 0.25
    assert check_timeout(None) is None and check_timeout(math.inf) is None


# ---- a request field of the wrong JSON type ---------------------------------------------------------------------

@pytest.mark.parametrize(("types", "value", "says"), [
    (dict, [1], "an object"), (list, "x", "a list"), (str, 3, "a string"), (int, "3", "an integer"),
    ((int, float), "3", "a number"), ((bool, str), 3, "true/false or a string"), (dict, True, "an object"),
])
def test_a_field_of_the_wrong_type_is_named_in_json_terms(types: Any, value: Any, says: str) -> None:
    """A request field whose type is wrong and whose check gives no hint (``session.start`` with ``params=[1]`` from the
    SDK) is refused naming the JSON type it must be, as docs/protocol.md speaks of them; before: "field 'params' must be
    <class 'dict'>", Python's repr of a class."""
    from labd.daemon.api.base import Request

    with pytest.raises(ApiError) as err:
        Request(None, {"f": value}, (b"", "")).arg("f", types)  # type: ignore[arg-type]
    assert err.value.code == "bad_request"
    assert err.value.message == f"field 'f' must be {says}"


@pytest.mark.parametrize(("body", "says"), [
    ({}, "missing field 'session'"),
    ({"session": True}, "field 'session' must be a session id"),
    ({"session": 7}, "field 'session' must be a session id"),
    ({"session": ""}, "field 'session' must be a session id"),
    ({"session": "abc", "limit": 2.0 ** 70}, "field 'limit' is out of range"),
])
def test_a_field_refused_is_named_in_details_for_a_gui_to_mark(body: dict[str, object], says: str) -> None:
    """Every field check of a request (missing, wrong type, failed check, past 64 bits) answers ``bad_request`` with
    ``details.field`` naming the field, as an unknown field's refusal did; a GUI client marks the field it names
    (a protocol review found ``details`` empty for a wrong type)."""
    from labd.daemon.api.base import ApiError, Request

    request = Request(None, body, (b"client", "req-1"))  # type: ignore[arg-type]  # arg() reads the body only
    with pytest.raises(ApiError) as err:
        request.arg("session", str, check=lambda s: len(s) > 0, hint="a session id")
        request.arg("limit", int, 100)
    assert err.value.code == "bad_request" and says in err.value.message
    assert err.value.details == {"field": says.split("'")[1]}


@pytest.mark.parametrize("falsy", [None, False, 0, "", [], {}])
def test_a_falsy_limits_on_resume_or_branch_means_none_as_on_start(falsy: object) -> None:
    """``limits`` of ``false``, ``0``, ``""``, ``[]`` or ``{}`` means no change on ``session.resume`` and
    ``session.branch``, as it means none on ``session.start`` (docs/protocol.md says so of every request); they
    were refused "must be an object". Anything else that is not an object is refused naming the field."""
    from labd.daemon.api.base import ApiError
    from labd.daemon.api.durable import _merged_limits

    row = {"limits": {"memory": 512 << 20, "timeout": 60.0}}
    assert _merged_limits(row, falsy).to_dict() == _merged_limits(row, None).to_dict()
    with pytest.raises(ApiError) as err:
        _merged_limits(row, "512M")
    assert err.value.details == {"field": "limits"}
