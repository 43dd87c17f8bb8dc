"""Unit tests for daemon.config: config precedence and checks (unit parsing: test_units.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labd.daemon.config import Config, ConfigError, load_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LABD_* config variables leak in from the outer environment."""
    for name in ("LABD_DB", "LABD_LOG_FORMAT", "LABD_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)


# ---- load_config ------------------------------------------------------------------------------------

def _write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_defaults_without_config_file(tmp_path: Path) -> None:
    """Without config file, env or overrides: the dataclass defaults and a SQLite db inside the home."""
    home = tmp_path / "h"
    cfg = load_config(home)
    assert isinstance(cfg, Config)
    assert cfg.home == home.resolve() and isinstance(cfg.home, Path)
    assert cfg.db_url == f"sqlite:///{home.resolve() / 'labd.db'}"
    assert cfg.log_format == "auto" and cfg.stop_grace == 5.0 and cfg.secret_env == []


def test_home_comes_from_labd_home_when_not_given(isolated_env: Path) -> None:
    """With no home argument, LABD_HOME (set by the isolated_env fixture) is used."""
    assert load_config().home == isolated_env.resolve()


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    """Settings in the [daemon] table replace defaults; models and prices tables are read too."""
    home = tmp_path / "h"
    _write_config(home, '[daemon]\nstop_grace = 1.5\nlog_level = "debug"\nsecret_env = ["MY_KEY"]\n'
                        'db_url = "sqlite:///file.db"\n[models.fast]\nprovider = "openai"\nmodel = "m"\n'
                        '[prices."m"]\ninput = 1.0\noutput = 2\n')
    cfg = load_config(home)
    assert (cfg.stop_grace, cfg.log_level, cfg.secret_env, cfg.db_url) == (1.5, "debug", ["MY_KEY"],
                                                                          "sqlite:///file.db")
    assert cfg.models == {"fast": {"provider": "openai", "model": "m"}}
    assert cfg.prices == {"m": {"input": 1.0, "output": 2}}


@pytest.mark.parametrize("text", ['[other]\nwhatever = 1\n', '[models.x]\napi_key = "sk-1"\n',
                                  '[prices.m]\ninput = -1\n', '[prices.m]\ncurrency = 1\n', 'models = 3\n'])
def test_bad_config_sections_are_refused(tmp_path: Path, text: str) -> None:
    """Unknown sections (typos), keys written into the file, and malformed prices or models raise ConfigError."""
    home = tmp_path / "h"
    _write_config(home, text)
    with pytest.raises(ConfigError):
        load_config(home)


def test_env_overrides_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LABD_DB / LABD_LOG_LEVEL beat the config file; empty variables are ignored."""
    home = tmp_path / "h"
    _write_config(home, '[daemon]\ndb_url = "sqlite:///file.db"\nlog_level = "debug"\nlog_format = "json"\n')
    monkeypatch.setenv("LABD_DB", "sqlite:///env.db")
    monkeypatch.setenv("LABD_LOG_LEVEL", "warning")
    monkeypatch.setenv("LABD_LOG_FORMAT", "")
    cfg = load_config(home)
    assert (cfg.db_url, cfg.log_level, cfg.log_format) == ("sqlite:///env.db", "warning", "json")


def test_overrides_beat_env_and_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides (CLI flags) win over env and file; an override of None leaves the value alone."""
    home = tmp_path / "h"
    _write_config(home, '[daemon]\ndb_url = "sqlite:///file.db"\nstop_grace = 2.0\n')
    monkeypatch.setenv("LABD_DB", "sqlite:///env.db")
    cfg = load_config(home, db_url="sqlite:///flag.db", stop_grace=None, log_format="console")
    assert (cfg.db_url, cfg.stop_grace, cfg.log_format) == ("sqlite:///flag.db", 2.0, "console")


def test_a_model_of_an_unknown_provider_is_refused_at_start_and_known_ones_are_kept(tmp_path: Path) -> None:
    """``provider = "nonesuch"`` (a typo) is refused naming the providers labd knows: it passed ``serve --check`` and
    the daemon's start, and every session using the model failed at its first LLM call. Each known one loads."""
    from labd.ipc.models import PROVIDER_NAMES

    home = tmp_path / "h"
    _write_config(home, '[models.default]\nprovider = "nonesuch"\nmodel = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown provider 'nonesuch' \(known: offline, openai, anthropic"):
        load_config(home)
    for provider in PROVIDER_NAMES:
        _write_config(home, f'[models.default]\nprovider = "{provider}"\nmodel = "x"\n')
        assert load_config(home).models["default"]["provider"] == provider


def test_unknown_config_key_is_an_error(tmp_path: Path) -> None:
    """A misspelt [daemon] setting is refused and named."""
    home = tmp_path / "h"
    _write_config(home, "[daemon]\nstop_grase = 1\n")
    with pytest.raises(ConfigError, match="stop_grase"):
        load_config(home)


def test_unknown_override_is_an_error(tmp_path: Path) -> None:
    """An override that is not a Config field raises ConfigError (not TypeError)."""
    with pytest.raises(ConfigError):
        load_config(tmp_path / "h", bogus=1)


def test_bad_toml_is_an_error(tmp_path: Path) -> None:
    """A config file that is not valid TOML raises ConfigError naming the file."""
    home = tmp_path / "h"
    _write_config(home, "[daemon\nstop_grace = \n")
    with pytest.raises(ConfigError, match="config.toml"):
        load_config(home)


@pytest.mark.parametrize("where", ["file", "env", "override"])
def test_bad_log_format_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """log_format must be auto, json or console wherever it comes from."""
    home = tmp_path / "h"
    overrides = {}
    if where == "file":
        _write_config(home, '[daemon]\nlog_format = "xml"\n')
    elif where == "env":
        monkeypatch.setenv("LABD_LOG_FORMAT", "xml")
    else:
        overrides["log_format"] = "xml"
    with pytest.raises(ConfigError, match="log_format"):
        load_config(home, **overrides)


def test_runner_nice_default_file_env_and_bad_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[daemon] runner_nice defaults to 0, is read from the file and from LABD_RUNNER_NICE (the environment wins),
    and anything but a whole number from 0 to 19 is refused with ConfigError."""
    monkeypatch.delenv("LABD_RUNNER_NICE", raising=False)
    home = tmp_path / "h"
    assert load_config(home).runner_nice == 0
    _write_config(home, "[daemon]\nrunner_nice = 7\n")
    assert load_config(home).runner_nice == 7
    monkeypatch.setenv("LABD_RUNNER_NICE", "19")
    assert load_config(home).runner_nice == 19
    monkeypatch.delenv("LABD_RUNNER_NICE")
    for bad in ("-1", "20", "true", "2.5", '"x"'):
        _write_config(home, f"[daemon]\nrunner_nice = {bad}\n")
        with pytest.raises(ConfigError, match="runner_nice"):
            load_config(home)
    monkeypatch.setenv("LABD_RUNNER_NICE", "high")
    _write_config(home, "")
    with pytest.raises(ConfigError, match="runner_nice"):
        load_config(home)


def _size_setting(home: Path, name: str, default: int, good: dict[str, int | None], bad: list[str]) -> None:
    """``[daemon] name`` defaults to ``default``, reads each of ``good`` (TOML text -> value) as given, and refuses
    each of ``bad`` with a ConfigError naming it."""
    assert getattr(load_config(home), name) == default
    for text, value in good.items():
        _write_config(home, f"[daemon]\n{name} = {text}\n")
        assert getattr(load_config(home), name) == value
    for text in bad:
        _write_config(home, f"[daemon]\n{name} = {text}\n")
        with pytest.raises(ConfigError, match=name):
            load_config(home)


def test_max_unread_replies_default_sizes_and_bad_values(tmp_path: Path) -> None:
    """[daemon] max_unread_replies (the budget of large replies clients have not read, daemon/reply_budget.py)
    defaults to 256 MiB, takes a size or bytes, and refuses less than 1 MiB, no unit, or anything but a size."""
    _size_setting(tmp_path / "h", "max_unread_replies", 256 * 1024 * 1024,
                  {'"64M"': 64 * 1024 * 1024, "2097152": 2 * 1024 * 1024}, ['"512K"', '"64"', "1000", "true", '"lots"'])


def test_max_session_record_default_sizes_none_and_bad_values(tmp_path: Path) -> None:
    """[daemon] max_session_record (what one session may record of labd's own kinds, daemon/recordcap.py) defaults
    to 8 GiB, takes a size or bytes, "none" (or false or 0, as ``max_output`` does) removes the bound, and less than
    1 MiB or anything else is refused."""
    _size_setting(tmp_path / "h", "max_session_record", 8 * 1024**3,
                  {'"64M"': 64 * 1024 * 1024, "2097152": 2 * 1024 * 1024, '"none"': None, "false": None, "0": None},
                  ['"512K"', "1000", "true", '"lots"', "-1"])


def test_memory_ceiling_default_auto_sizes_none_and_bad_values(tmp_path: Path) -> None:
    """[daemon] memory_ceiling (the daemon's own memory past which its inbound connections are dropped,
    daemon/inbound.py) defaults to "auto" (a quarter of RAM, 1-4 GiB), takes a size or bytes of at least 64 MiB,
    "none" (or false or 0) turns it off, and anything else is refused."""
    from labd.daemon.inbound import auto_ceiling

    assert 1 << 30 <= auto_ceiling() <= 4 << 30
    _size_setting(tmp_path / "h", "memory_ceiling", auto_ceiling(),
                  {'"auto"': auto_ceiling(), '"2G"': 2 << 30, str(128 << 20): 128 << 20, '"none"': None, "false": None,
                   "0": None}, ['"32M"', '"64"', "1000", "true", '"lots"', "-1"])


def test_cgroups_and_session_tasks_defaults_and_bad_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """[daemon] cgroups (a cgroup per session, daemon/cgroups.py) is "auto" by default, "off" turns it off (also
    LABD_CGROUPS); session_tasks (the group's pids.max) defaults to 4096, 0 means no bound, and a bound too small for
    a runner's own threads, a negative or a non-number is refused with the setting named."""
    monkeypatch.delenv("LABD_CGROUPS", raising=False)
    home = tmp_path / "h"
    cfg = load_config(home)
    assert (cfg.cgroups, cfg.session_tasks) == ("auto", 4096)
    _write_config(home, "[daemon]\ncgroups = \"off\"\nsession_tasks = 0\n")
    assert (load_config(home).cgroups, load_config(home).session_tasks) == ("off", 0)
    _write_config(home, "")
    monkeypatch.setenv("LABD_CGROUPS", "off")
    assert load_config(home).cgroups == "off"
    monkeypatch.delenv("LABD_CGROUPS")
    for text, named in (('cgroups = "maybe"', "cgroups"), ("session_tasks = 10", "session_tasks"),
                        ("session_tasks = -1", "session_tasks"), ('session_tasks = "many"', "session_tasks")):
        _write_config(home, "[daemon]\n" + text + "\n")
        with pytest.raises(ConfigError, match=named):
            load_config(home)


@pytest.mark.parametrize(("name", "most"), [("max_message", 1 << 30), ("procs", 1_000_000),
                                            ("session_tasks", 1 << 22)])
def test_whole_number_settings_past_what_they_are_used_for_are_refused(tmp_path: Path, name: str, most: int) -> None:
    """[daemon] max_message, procs and session_tasks are refused at load past what they can be used for, naming the
    setting and its bound; the bound itself is kept. Before (an attack review): max_message = 2**62 passed and the
    daemon died at start (a traceback in its ingest thread: libzmq's MAXMSGSIZE, twice it, overflowed); procs over a
    session's 1,000,000 made every start ``bad_limits`` naming a procs the client never sent; session_tasks past the
    kernel's largest pids.max made every session's cgroup fail (its limits held from /proc only, a warning each)."""
    home = tmp_path / "h"
    for value in (most + 1, 2**62, 10**23):
        _write_config(home, f"[daemon]\n{name} = {value}\n")
        with pytest.raises(ConfigError, match=rf"config.toml \[daemon\]: {name} must be a whole number .*to {most}\b"):
            load_config(home)
    _write_config(home, f"[daemon]\n{name} = {most}\n")
    assert getattr(load_config(home), name) == most


def test_the_largest_max_message_fits_libzmq() -> None:
    """Twice the largest max_message (what the daemon's ROUTERs set as MAXMSGSIZE) is a value libzmq takes."""
    import zmq

    from labd.daemon.config_checks import MAX_MAX_MESSAGE

    ctx = zmq.Context()
    try:
        with ctx.socket(zmq.ROUTER) as sock:
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MAX_MESSAGE)
            assert sock.getsockopt(zmq.MAXMSGSIZE) == 2 * MAX_MAX_MESSAGE
    finally:
        ctx.term()


@pytest.mark.parametrize(("text", "named"), [
    ('[daemon]\nsandbox = "x"\n', r"\[sandbox\] is a table of its own"),
    ('[daemon.sandbox]\nmechanism = "none"\n', "sandbox"),
    ('[daemon.models.default]\nprovider = "openai"\napi_key = "sk-1"\n', "models"),
    ("[daemon]\npolicy = 5\n", r"\[\[policy\]\]"),
    ("[daemon]\nlauncher = 5\n", "launcher"),
    ("[daemon]\ntelemetry = 5\n", "telemetry"),
    ('[daemon]\nhome = "/elsewhere"\n', "LABD_HOME"),
    ("[daemon]\nmcp_servers = {}\n", "mcp_servers"),
    ("max_sessions = 2\n[daemon]\nprocs = 10\n", "max_sessions must be under"),
    ("daemon = 3\n", "must be a table"),
])
def test_a_setting_in_the_wrong_table_is_refused_and_named(tmp_path: Path, text: str, named: str) -> None:
    """A table's settings written into [daemon] (or the home there) are refused, naming where they belong: they were
    taken as they were, past their table's checks (a key in [daemon.models.x] was accepted; a [daemon] sandbox string
    stopped the daemon's start with a traceback; a [daemon] home moved the daemon to another home). A [daemon]
    setting above every table header is refused naming [daemon]."""
    home = tmp_path / "h"
    _write_config(home, text)
    with pytest.raises(ConfigError, match=named):
        load_config(home)


@pytest.mark.parametrize(("name", "bad", "edge"), [
    ("stop_grace", 1e300, 86400), ("term_grace", 86401, 0.001), ("sample_interval", 1e-9, 0.01),
    ("limit_interval", 3601, 3600), ("record_interval", 0.001, 3600), ("stop_grace", 0, 86400),
])
def test_graces_and_intervals_past_what_they_are_for_are_refused(tmp_path: Path, name: str, bad: float,
                                                                 edge: float) -> None:
    """Stop graces are at most a day and the monitor's intervals from 0.01 s to an hour: `stop_grace = 1e300` was
    accepted (a stop never reached SIGTERM, a drain never ended), `sample_interval = 1e-9` spun the daemon's CPU. The
    refusal names the setting and its range; the edges are accepted."""
    home = tmp_path / "h"
    _write_config(home, f"[daemon]\n{name} = {bad}\n")
    with pytest.raises(ConfigError, match=rf"{name} must be a number of seconds .* to "):
        load_config(home)
    _write_config(home, f"[daemon]\n{name} = {edge}\n")
    assert getattr(load_config(home), name) == edge


def test_serve_check_says_whether_a_daemon_would_start_and_starts_nothing(tmp_path: Path) -> None:
    """``labd serve --check`` reads the configuration as ``labd serve`` would and answers without starting a daemon:
    exit 0 naming the files it read, or exit 2 with the one line ``serve`` would print (an edited service's
    ``config.toml`` was found bad only at its next restart, which systemd then retried forever). Nothing is made in
    the home, and --check with --detach is a usage error."""
    import os
    import subprocess
    import sys

    home = tmp_path / "h"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labd", "--home", str(home), "serve", "--check", *extra],
                              capture_output=True, text=True, env=env, timeout=120)

    _write_config(home, "[daemon]\nmax_sessions = 3\n")
    ok = check()
    assert ok.returncode == 0 and "configuration OK" in ok.stdout and str(home / "config.toml") in ok.stdout, ok
    _write_config(home, "[daemon]\nstop_grace = 1e300\n")
    bad = check()
    assert bad.returncode == 2 and bad.stdout == "", bad
    assert bad.stderr.count("\n") == 1 and "stop_grace" in bad.stderr and "Traceback" not in bad.stderr, bad
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]  # no database, lock or sessions
    usage = check("--detach")
    assert usage.returncode == 2 and "--check" in usage.stderr, usage


@pytest.mark.parametrize(("db", "said"), [
    ("mysql://x@localhost/y", "SQLite or PostgreSQL"),
    ("notaurl", "is not a database URL"),
    ("postgresql+pg8000://a@localhost/c", "no driver for postgresql+pg8000"),
    ("postgresql+psycopg://nobody@127.0.0.1:1/db", "cannot use the database postgresql+psycopg://127.0.0.1:1/db"),
    ("sqlite:///{tmp}/missing/dir/labd.db", "does not exist"),
])
def test_serve_check_and_serve_refuse_a_database_the_daemon_cannot_use(tmp_path: Path, db: str, said: str) -> None:
    """``labd serve --check --db URL`` opens the database as the daemon would and says in one line why it could
    not (it said "configuration OK" for all of these); ``labd serve`` refuses the same URL in one line, exit 2, with
    no traceback (a MySQL URL ended it with ModuleNotFoundError's)."""
    import os
    import subprocess
    import sys

    home, db = tmp_path / "h", db.replace("{tmp}", str(tmp_path))
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir(mode=0o700)
    for args in (["serve", "--check", "--db", db], ["serve", "--db", db]):
        r = subprocess.run([sys.executable, "-m", "labd", "--home", str(home), *args], capture_output=True,
                           text=True, env=env, timeout=120)
        last = r.stderr.strip().splitlines()[-1]  # serve may have logged its start before it met the database
        assert r.returncode == 2 and said in last and last.startswith("labd: "), (args, r.stderr)
        assert "Traceback" not in r.stderr and ("--check" not in args or r.stderr.count("\n") == 1), r.stderr


@pytest.mark.parametrize("damage", ["newer", "garbage"])
def test_serve_check_and_serve_refuse_a_store_from_a_newer_labd_or_not_a_database(tmp_path: Path, damage: str) -> None:
    """A home whose store a newer labd wrote (its schema revision unknown here: a downgrade) or whose ``labd.db`` is
    not a SQLite file: ``labd serve --check`` says so in one line, exit 2 (it said "configuration OK"), and ``labd
    serve`` refuses it in one line, exit 2 (the newer schema ended it with Alembic's 60-line traceback, exit 1).
    A store this labd made passes the check, read only: the file is unchanged."""
    import os
    import sqlite3
    import subprocess
    import sys

    from labd.store.db import migrate, open_engine

    home = tmp_path / "h"
    home.mkdir()
    db = home / "labd.db"
    engine = open_engine(f"sqlite:///{db}")
    migrate(engine)
    engine.dispose()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir(mode=0o700)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labd", "--home", str(home), *args], capture_output=True,
                              text=True, env=env, timeout=120)

    before = db.read_bytes()
    ok = run("serve", "--check")
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok
    assert db.read_bytes() == before
    if damage == "newer":
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
        said = "written by a newer labd"
    else:
        for extra in home.glob("labd.db-*"):
            extra.unlink()
        db.write_bytes(os.urandom(8192))
        said = "not a database"
    for args in (["serve", "--check"], ["serve"]):
        r = run(*args)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        assert r.returncode == 2 and said in last and last.startswith("labd: "), (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(("text", "said"), [
    ("memory_total = 16\n", "memory_total must be a size of at least 64M with its unit, like 16G, not 16"),
    ('memory_total = "16K"\n', "memory_total must be a size of at least 64M"),
    ("session_nofile = 99999999\n", "session_nofile must be 0 (inherit the daemon's limit) or a whole number from 64 "
                                    "to 1048576"),
])
def test_sizes_and_limits_that_fit_nothing_are_refused(tmp_path: Path, text: str, said: str) -> None:
    """`memory_total = 16` (a TOML integer: 16 bytes, where 16 GiB was meant) was accepted and no session with a
    memory limit could ever start; `session_nofile = 99999999` was accepted and every runner's setrlimit failed.
    Both are ConfigErrors naming the bound; 64M and 1048576 pass."""
    home = tmp_path / "h"
    _write_config(home, f"[daemon]\n{text}")
    with pytest.raises(ConfigError) as err:
        load_config(home)
    assert said in str(err.value), str(err.value)
    _write_config(home, '[daemon]\nmemory_total = "64M"\nsession_nofile = 1048576\n')
    cfg = load_config(home)
    assert cfg.memory_total == 64 << 20 and cfg.session_nofile == 1 << 20


def test_a_retention_without_unit_is_refused(tmp_path: Path) -> None:
    """``retention = "30"`` is refused (it meant 30 days and deleted every session 30 s after it ended), as
    ``labd prune --older-than 30`` is; ``"30d"`` is 30 days."""
    home = tmp_path / "h"
    for bare in ("30", " 5 ", "1.5"):
        _write_config(home, f'[daemon]\nretention = "{bare}"\n')
        with pytest.raises(ConfigError, match="has no unit"):
            load_config(home)
    _write_config(home, '[daemon]\nretention = "30d"\n')
    assert load_config(home).retention_seconds == 30 * 86400


def test_a_retention_in_capital_m_is_refused(tmp_path: Path) -> None:
    """``retention = "1M"`` (one month, meant) is refused at load, so ``labd serve --check`` says so: it was read
    as one minute, and the daemon deleted every session a minute after it ended."""
    home = tmp_path / "h"
    for given in ("1M", "6M", "6 months"):
        _write_config(home, f'[daemon]\nretention = "{given}"\n')
        with pytest.raises(ConfigError, match="retention: bad duration.*(minutes or months|months differ)"):
            load_config(home)


def test_a_preload_that_cannot_be_imported_is_refused(tmp_path: Path) -> None:
    """``preload = ["missing_module"]`` is refused at load (``labd serve --check`` too): the template died at every
    start importing it and the daemon never served. An installed module is accepted, not imported here."""
    home = tmp_path / "h"
    _write_config(home, '[daemon]\npreload = ["no_such_module_xyz.sub"]\n')
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        load_config(home)
    _write_config(home, '[daemon]\npreload = ["json.decoder"]\n')
    assert load_config(home).preload == ["json.decoder"]


def test_a_broken_link_a_byte_order_mark_and_names_no_variable_has(tmp_path: Path) -> None:
    """A ``config.toml`` that is a link to a missing file is refused naming both (its settings were silently not
    applied); one starting with a UTF-8 byte order mark reads as TOML (it was "Invalid statement (at line 1)");
    ``secret_env`` entries that cannot name a variable (``""``, ``"A B"``) are refused (they withheld nothing)."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").symlink_to(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match="gone.toml, which does not exist"):
        load_config(home)
    (home / "config.toml").unlink()
    (home / "config.toml").write_bytes("\ufeff[daemon]\nstop_grace = 2.5\n".encode())
    assert load_config(home).stop_grace == 2.5
    for names in ('[""]', '["A B"]', '["A=B"]'):
        _write_config(home, f"[daemon]\nsecret_env = {names}\n")
        with pytest.raises(ConfigError, match="is not the name of an environment variable"):
            load_config(home)


def test_an_error_in_a_merged_setting_names_where_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value refused once the files, the environment and the flags are merged names where it came from: which file
    (the one whose value won), which variable, which flag. It named the setting only, and with two config files an
    administrator could not tell which one to mend."""
    user_dir, home = tmp_path / "xdg", tmp_path / "h"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user_dir))
    (user_dir / "labd").mkdir(parents=True)
    user_file = user_dir / "labd" / "config.toml"
    user_file.write_text("[daemon]\nstop_grace = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    assert str(caught.value).startswith(f"{user_file} [daemon]: stop_grace must be")
    _write_config(home, "[daemon]\nstop_grace = 1e9\n")  # the home's file wins, so its value is the one refused
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    assert str(caught.value).startswith(f"{home / 'config.toml'} [daemon]: stop_grace must be")
    _write_config(home, "")
    user_file.write_text("")
    monkeypatch.setenv("LABD_RUNNER_NICE", "40")
    with pytest.raises(ConfigError, match=r"^environment variable LABD_RUNNER_NICE: runner_nice must be"):
        load_config(home)
    monkeypatch.delenv("LABD_RUNNER_NICE")
    with pytest.raises(ConfigError, match=r"^--listen: "):
        load_config(home, listen="udp://nowhere")
    with pytest.raises(ConfigError, match=r"^--db: db: "):
        load_config(home, db_url="mysql://x/y")
