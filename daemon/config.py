"""One typed configuration: defaults, then the config file, then the environment, then CLI flags."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from labd.daemon.config_checks import check_settings
from labd.daemon.config_tables import (
    ConfigError,
    check_agents,
    check_launcher,
    check_mcp,
    check_models,
    check_policy,
    check_prices,
    check_telemetry,
)
from labd.ipc.paths import Layout, layout_for
from labd.ipc.tomlfile import TomlFileError, read_toml

# The unit parsers are public (the CLI and SDK parse the same strings); re-exported here for old callers.
from labd.ipc.units import UnitError, parse_duration, parse_percent, parse_size

__all__ = ["Config", "ConfigError", "SandboxSettings", "load_config", "parse_size", "parse_duration", "parse_percent",
           "UnitError"]


@dataclass(frozen=True)
class SandboxSettings:
    """The ``[sandbox]`` section: how code that agents execute is confined (docs/security.md)."""

    mechanism: str = "auto"  # auto (bwrap, else landlock) | bwrap | landlock | none
    network: bool = False  # default for sessions that do not say (session.start field "network")
    require: bool = False  # refuse to run code when no sandbox works
    hide: list[str] = field(default_factory=list)  # more paths executed code must not read (besides labd's own)
    confine_runner: bool = True  # Landlock on runner processes: no access to labd's home but their own session


@dataclass(frozen=True)
class Config:
    """Daemon settings."""

    home: Path
    db_url: str
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    stop_grace: float = 5.0  # cooperative stop -> SIGTERM after this many seconds
    term_grace: float = 5.0  # SIGTERM -> SIGKILL after this many seconds
    sample_interval: float = 2.0  # process-table pass while no session has a memory limit or is near its procs limit
    limit_interval: float = 0.1  # process-table pass while one has (memory breach -> kill bound)
    record_interval: float = 2.0  # resource.sample events
    max_message: int = 16 * 1024 * 1024
    #: bytes of large replies (64 KiB and more) the daemon may hold for clients that have not read them; past it a
    #: large reply is answered ``busy`` (daemon/reply_budget.py). A size ("256M") or bytes
    max_unread_replies: int | str = 256 * 1024 * 1024
    #: bytes of labd's own events (steps, agents, LLM calls, tools, files, approvals) one session's run may record;
    #: past it the session is stopped (daemon/recordcap.py). A size ("8G") or bytes; "none" (or false/0): no bound
    max_session_record: int | str | None = "8G"
    #: the daemon's own resident memory past which it drops every client and runner connection, and what libzmq held
    #: for them (daemon/inbound.py): a size ("4G"), "auto" (a quarter of RAM, 1-4 GiB) or "none"
    memory_ceiling: int | str | None = "auto"
    secret_env: list[str] = field(default_factory=list)  # extra env var names withheld from sessions
    preload: list[str] = field(default_factory=list)  # extra modules the template imports
    #: also serve clients on TCP (always CurveZMQ): "tcp://HOST:PORT" (control; events on PORT+1)
    listen: str | None = None
    #: automatic retention: delete sessions that ended longer ago than this ("30d"); None keeps everything
    retention: str | None = None
    #: ... and only sessions in these terminal statuses (default: all of them)
    retention_statuses: list[str] = field(default_factory=lambda: ["completed", "failed", "cancelled", "lost"])
    #: [models.<name>]: provider, model, base_url, api_key_env (the *name* of the variable), ...
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: [prices."<model>"]: input, output (USD per million tokens), over the shipped defaults
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    #: [telemetry]: otlp_endpoint (OTLP/HTTP base URL), service_name, interval (s), headers_env
    #: ({header: NAME of the environment variable holding its value}); no endpoint = no export
    telemetry: dict[str, Any] = field(default_factory=dict)
    #: [agents.<name>]: agent roles (system_prompt or system_prompt_file, model, code_execution, mcp, extends)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: [mcp.servers.<name>]: MCP servers agents may use (ctx.agent(..., mcp=[name]))
    mcp_servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: [[policy]]: rules on what agents may do (labd.ipc.policy), validated at load, in evaluation order
    policy: list[dict[str, Any]] = field(default_factory=list)
    #: [sandbox]: how code that agents execute is confined
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    #: [launcher]: kind ("template" | "ray"), address ("auto" | "ray://..."), runner_listen, advertise, node_dir
    launcher: dict[str, Any] = field(default_factory=dict)

    @property
    def retention_seconds(self) -> float | None:
        return parse_duration(self.retention) if self.retention else None

    max_sessions: int = 0  # run queue: sessions running at once (0 = no limit)
    memory_total: int | str | None = None  # run queue: sum of --memory reservations (bytes or "16G")
    #: default process-count limit per session (``--procs`` overrides; 0 = none): a fork storm is killed
    procs: int | None = 256
    #: a warm spare runner kept by the template (runner/spare.py): 1 = on, 0 = off (env LABD_SPARE_RUNNERS)
    spare_runners: int = 1
    #: runners run this many nice values below the daemon (0-19; 0 = off, as started): the daemon's recording goes
    #: first when the CPU is short (daemon/priority.py; env LABD_RUNNER_NICE)
    runner_nice: int = 0
    #: default per-session output cap (captured stdout+stderr kept): a size ("1G"), or "none" for no cap
    max_output: int | str | None = "1G"
    #: RLIMIT_NOFILE (soft = hard) of every session process: runner, workflow checks and all they start, executed
    #: code included (set in the template, daemon/template_launcher.py); 0 = inherit the daemon's. Well below the
    #: daemon's own limit, so that one process of a session cannot take all of the daemon's file descriptors
    session_nofile: int = 4096
    #: a cgroup per local session where the daemon can make one (daemon/cgroups.py): "auto" or "off"
    cgroups: str = "auto"
    #: the kernel's bound on one session's threads and processes together (its cgroup's pids.max); 0 = none
    session_tasks: int = 4096

    @property
    def layout(self) -> Layout:
        return layout_for(self.home)


_ENV = {"LABD_DB": "db_url", "LABD_LOG_FORMAT": "log_format", "LABD_LOG_LEVEL": "log_level",
        "LABD_SPARE_RUNNERS": "spare_runners", "LABD_RUNNER_NICE": "runner_nice", "LABD_CGROUPS": "cgroups"}


#: the Config fields that are not [daemon] settings: each is filled from a table of its own (or is the home itself)
_NOT_DAEMON = {"home": "the home is --home or LABD_HOME", "mcp_servers": "[mcp.servers.<name>] is a table of its own",
               "policy": "[[policy]] is a table of its own",
               **{k: f"[{k}] is a table of its own" for k in ("models", "prices", "telemetry", "agents", "sandbox",
                                                                "launcher")}}


def _setting_of(message: str) -> str:
    """The setting a check's message is about: its first word (every message of :func:`check_settings` starts
    with the setting's name; ``db`` is ``db_url``)."""
    word = re.match(r"[a-z_]+", message)
    name = word.group(0) if word else ""
    return "db_url" if name == "db" else name


def config_files(layout: Layout) -> list[Path]:
    """Config files in the order they apply: the user's (XDG config dir), then the home's."""
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [xdg / "labd" / "config.toml", layout.config_file]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return read_toml(path)
    except TomlFileError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _check_sandbox(path: Path, section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [sandbox] must be a table")
    known = {f.name for f in fields(SandboxSettings)}
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"{path}: unknown [sandbox] settings {sorted(unknown)} (known: {', '.join(sorted(known))})")
    if section.get("mechanism", "auto") not in ("auto", "bwrap", "landlock", "none"):
        raise ConfigError(f"{path}: [sandbox] mechanism must be auto, bwrap, landlock or none")
    for name in ("network", "require", "confine_runner"):
        if not isinstance(section.get(name, False), bool):
            raise ConfigError(f"{path}: [sandbox] {name} must be true or false")
    hide = section.get("hide", [])
    if not isinstance(hide, list) or not all(isinstance(x, str) for x in hide):
        raise ConfigError(f"{path}: [sandbox] hide must be a list of paths")
    return section


def load_config(home: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Build the config: defaults -> config files (user's, then home's) -> environment -> overrides."""
    layout = layout_for(home)
    values: dict[str, Any] = {"home": layout.home, "db_url": layout.default_db_url}
    # the fields filled from a table of their own (or from the home itself) are not [daemon] settings: given there,
    # they bypassed their table's checks (an api_key in [daemon.models.x]; a [daemon] sandbox string ended the start)
    daemon_keys = {f.name for f in fields(Config)} - set(_NOT_DAEMON)
    models: dict[str, dict[str, Any]] = {}
    prices: dict[str, dict[str, float]] = {}
    mcp_servers: dict[str, dict[str, Any]] = {}
    telemetry: dict[str, Any] = {}
    agents: dict[str, dict[str, Any]] = {}
    sandbox: dict[str, Any] = {}
    policies: list[list[dict[str, Any]]] = []
    launcher: dict[str, Any] = {}
    origin: dict[str, str] = {}  # setting -> where it was given (a file's [daemon], a variable, a flag), for errors
    for path in config_files(layout):
        if not path.exists():
            if path.is_symlink():  # a link to a file that is gone: its settings were silently not applied
                raise ConfigError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist")
            continue
        data = _read_toml(path)
        unknown_sections = set(data) - {"daemon", "models", "prices", "mcp", "telemetry", "agents", "sandbox",
                                        "policy", "launcher"} - daemon_keys
        if unknown_sections:
            raise ConfigError(f"{path}: unknown sections {sorted(unknown_sections)} "
                              "(known: daemon, models, prices, mcp, telemetry, agents, sandbox, policy, launcher)")
        policies.append(check_policy(path, data.get("policy", [])))
        launcher.update(check_launcher(path, data.get("launcher", {})))
        sandbox.update(_check_sandbox(path, data.get("sandbox", {})))
        stray = set(data) & daemon_keys
        if stray:  # a [daemon] setting above every table header
            raise ConfigError(f"{path}: {', '.join(sorted(stray))} must be under [daemon], not at the top of the file")
        section = data.get("daemon", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [daemon] must be a table")
        unknown = set(section) - daemon_keys
        if unknown:
            hints = [_NOT_DAEMON[k] for k in sorted(unknown) if k in _NOT_DAEMON]
            hint = f" ({'; '.join(hints)})" if hints else ""
            raise ConfigError(f"{path}: unknown [daemon] settings {sorted(unknown)}{hint}")
        values.update(section)
        origin.update({k: f"{path} [daemon]" for k in section})
        models.update(check_models(path, data.get("models", {})))
        prices.update(check_prices(path, data.get("prices", {})))
        mcp_servers.update(check_mcp(path, data.get("mcp", {})))
        telemetry.update(check_telemetry(path, data.get("telemetry", {})))
        agents.update(check_agents(path, data.get("agents", {})))
    values.setdefault("models", models)
    values.setdefault("prices", prices)
    values.setdefault("mcp_servers", mcp_servers)
    values.setdefault("telemetry", telemetry)
    values.setdefault("agents", agents)
    # the home's file wins, as for every setting: its rules are evaluated before the user file's
    values.setdefault("policy", [rule for rules in reversed(policies) for rule in rules])
    if len(policies) > 1:  # names must stay unique across the files too (decisions name the rule)
        check_policy(Path("config.toml"), values["policy"])
    values.setdefault("sandbox", SandboxSettings(**sandbox))
    values.setdefault("launcher", launcher)
    for env, key in _ENV.items():
        if os.environ.get(env):
            values[key] = os.environ[env]
            origin[key] = f"environment variable {env}"
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
            origin[key] = f"--{key.removesuffix('_url').replace('_', '-')}"
    try:
        cfg = Config(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    try:
        cfg = check_settings(cfg)
    except ConfigError as exc:  # name where the setting was given: a file (which), a variable or a flag
        where = origin.get(_setting_of(str(exc)))
        if where is None:
            raise
        raise ConfigError(f"{where}: {exc}") from None
    return replace(cfg, home=Path(cfg.home))
