"""One reader for the TOML files a user writes (labd.ipc.tomlfile): config.toml, policy files and agent role files
each say in one line what is wrong (not UTF-8, nested too deeply, a syntax error, unreadable), never a traceback;
and sizes or durations too large to compute are refused as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from labd.daemon.config import ConfigError, load_config
from labd.ipc.policy import PolicyError
from labd.ipc.policy_rules import load_file
from labd.ipc.tomlfile import TomlFileError, read_toml
from labd.ipc.units import BeyondAny, UnitError, parse_duration, parse_size
from labd.runner.roles import RoleError, load_roles

DEEP = "x = " + "[" * 3000 + "]" * 3000 + "\n"  # tomllib recurses once per level: RecursionError before the fix

pytestmark = pytest.mark.timeout(60)


def test_read_toml_says_what_is_wrong(tmp_path: Path) -> None:
    """Not UTF-8 (the byte and its line), nested too deeply, a syntax error, a missing file: a TomlFileError each,
    the missing file marked unreadable; a good file is its table."""
    f = tmp_path / "f.toml"
    f.write_bytes(b'a = "ok"\nb = "\xff"\n')
    with pytest.raises(TomlFileError, match=r"^not UTF-8 text: byte 0xff on line 2"):
        read_toml(f)
    f.write_text(DEEP)
    with pytest.raises(TomlFileError, match="nested too deeply"):
        read_toml(f)
    f.write_text("[a\n")
    with pytest.raises(TomlFileError) as err:
        read_toml(f)
    assert not err.value.unreadable
    with pytest.raises(TomlFileError) as err:
        read_toml(tmp_path / "missing.toml")
    assert err.value.unreadable and "No such file" in str(err.value)
    f.write_text('a = "é"\n[b]\nc = 1\n')
    assert read_toml(f) == {"a": "é", "b": {"c": 1}}


def test_a_deeply_nested_config_policy_or_role_file_is_a_one_line_error(tmp_path: Path) -> None:
    """config.toml, a policy file and an agent role file nested thousands of levels deep: ConfigError, PolicyError,
    RoleError naming the file (before: RecursionError from each)."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text("[daemon]\n" + DEEP)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(home)
    policy = tmp_path / "p.toml"
    policy.write_text("[policy]\n" + DEEP)
    with pytest.raises(PolicyError, match=f"{policy}: not valid TOML: .*nested too deeply"):
        load_file(policy)
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "deep.toml").write_text(DEEP)
    with pytest.raises(RoleError, match="deep.toml: arrays or tables nested too deeply"):
        load_roles({}, agents)


def test_a_config_or_policy_file_that_is_a_fifo_or_device_is_refused_at_once(tmp_path: Path) -> None:
    """config.toml that is a FIFO, and a policy file (``labd run --policy``, ``labd policy check``) that is a FIFO or
    ``/dev/zero``: ConfigError / PolicyError naming the file, "not a regular file", at once. The FIFO hung `labd serve`,
    `labd run --policy` and `labd policy check` until something wrote to it; /dev/zero grew them without end."""
    import os

    home = tmp_path / "h"
    home.mkdir()
    os.mkfifo(home / "config.toml")
    with pytest.raises(ConfigError, match=f"cannot read {home / 'config.toml'}: not a regular file"):
        load_config(home)
    fifo = tmp_path / "rules.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(PolicyError, match=f"cannot read policy file {path}: not a regular file"):
            load_file(path)


def test_an_agent_role_file_that_is_not_utf8_is_a_role_error(tmp_path: Path) -> None:
    """`<home>/agents/x.toml` that is not UTF-8: RoleError naming the file and the byte (before: UnicodeDecodeError)."""
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "x.toml").write_bytes(b'model = "\xe9"\n')
    with pytest.raises(RoleError, match=r"x.toml: not UTF-8 text: byte 0xe9 on line 1"):
        load_roles({}, agents)


def test_sizes_and_durations_too_large_to_compute_are_refused_as_such(tmp_path: Path) -> None:
    """`1e300T` and a duration of 400 digits are BeyondAny (a UnitError saying "beyond any"), not an OverflowError
    or "must be positive"; config.toml's memory_total says which setting."""
    with pytest.raises(BeyondAny, match="beyond any machine"):
        parse_size("1e300T")
    with pytest.raises(BeyondAny, match="beyond any time span"):
        parse_duration("9" * 400 + "d")
    with pytest.raises(UnitError, match="must be positive"):
        parse_duration("0s")
    assert parse_size("2G") == 2 * 2**30
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text('[daemon]\nmemory_total = "1e300T"\n')
    with pytest.raises(ConfigError, match=r"config.toml \[daemon\]: memory_total: bad size '1e300T': beyond any "):
        load_config(home)
