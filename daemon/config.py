"""One typed configuration: defaults, then the config file, then the environment, then CLI flags."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from labd.daemon.config_tables import (
    ConfigError,
    check_agents,
    check_launcher,
    check_mcp,
    check_models,
    check_policy,
    check_prices,
    check_telemetry,
    max_output_setting,
    size_setting,
)
from labd.daemon.inbound import auto_ceiling
from labd.daemon.limits import MAX_PROCS
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
    #: code included (set in the template, daemon/launcher.py); 0 = inherit the daemon's. Well below the daemon's
    #: own limit, so that one process of a session cannot take all of the daemon's file descriptors
    session_nofile: int = 4096
    #: a cgroup per local session where the daemon can make one (daemon/cgroups.py): "auto" or "off"
    cgroups: str = "auto"
    #: the kernel's bound on one session's threads and processes together (its cgroup's pids.max); 0 = none
    session_tasks: int = 4096

    @property
    def layout(self) -> Layout:
        return layout_for(self.home)


#: below this a runner cannot even start (its sockets, spool, pipes and imports need file descriptors)
MIN_SESSION_NOFILE = 64
#: the most file descriptors a session process may be given: the kernel's default fs.nr_open (above it setrlimit fails)
MAX_SESSION_NOFILE = 1 << 20
#: below this the runner's own threads (channel, capture, ag2's workers) may not start
MIN_SESSION_TASKS = 64
#: the kernel's largest pids.max (PID_MAX_LIMIT on 64-bit): with more, every session's cgroup failed to be made
MAX_SESSION_TASKS = 1 << 22
#: the largest max_message: libzmq's MAXMSGSIZE is twice it (2**62 overflowed it and the daemon died at start), and a
#: runner whose workflow forks keeps a buffer of this size for its children's events
MAX_MAX_MESSAGE = 1 << 30

_ENV = {"LABD_DB": "db_url", "LABD_LOG_FORMAT": "log_format", "LABD_LOG_LEVEL": "log_level",
        "LABD_SPARE_RUNNERS": "spare_runners", "LABD_RUNNER_NICE": "runner_nice", "LABD_CGROUPS": "cgroups"}


#: the Config fields that are not [daemon] settings: each is filled from a table of its own (or is the home itself)
_NOT_DAEMON = {"home": "the home is --home or LABD_HOME", "mcp_servers": "[mcp.servers.<name>] is a table of its own",
               "policy": "[[policy]] is a table of its own",
               **{k: f"[{k}] is a table of its own" for k in ("models", "prices", "telemetry", "agents", "sandbox",
                                                                "launcher")}}


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
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = Config(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    from labd.store.db import check_url

    try:
        check_url(str(cfg.db_url))
    except ValueError as exc:
        raise ConfigError(f"db: {exc}") from None
    if cfg.log_format not in ("auto", "json", "console"):
        raise ConfigError(f"log_format must be auto, json or console, not {cfg.log_format!r}")
    if str(cfg.log_level).lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, not {cfg.log_level!r}")
    if isinstance(cfg.spare_runners, str) and cfg.spare_runners.strip().isdigit():  # from the environment
        cfg = replace(cfg, spare_runners=int(cfg.spare_runners))
    if cfg.spare_runners not in (0, 1) or isinstance(cfg.spare_runners, bool):
        raise ConfigError(f"spare_runners must be 0 (off) or 1, not {cfg.spare_runners!r}")
    if isinstance(cfg.runner_nice, str) and cfg.runner_nice.strip().isdigit():  # from the environment
        cfg = replace(cfg, runner_nice=int(cfg.runner_nice))
    if isinstance(cfg.runner_nice, bool) or not isinstance(cfg.runner_nice, int) or not 0 <= cfg.runner_nice <= 19:
        raise ConfigError(f"runner_nice must be a whole number from 0 to 19, not {cfg.runner_nice!r}")
    if isinstance(cfg.session_nofile, bool) or not isinstance(cfg.session_nofile, int) \
            or not (cfg.session_nofile == 0 or MIN_SESSION_NOFILE <= cfg.session_nofile <= MAX_SESSION_NOFILE):
        raise ConfigError(f"session_nofile must be 0 (inherit the daemon's limit) or a whole number from "
                          f"{MIN_SESSION_NOFILE} to {MAX_SESSION_NOFILE} (the kernel's default fs.nr_open), not "
                          f"{cfg.session_nofile!r}")
    if cfg.cgroups not in ("auto", "off"):
        raise ConfigError(f'cgroups must be "auto" or "off", not {cfg.cgroups!r}')
    # at most what each is used for: a default procs over a session's limit refused every start (bad_limits)
    for name, most in (("max_sessions", 2**63 - 1), ("procs", MAX_PROCS), ("session_tasks", MAX_SESSION_TASKS)):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most):
            raise ConfigError(f"{name} must be a whole number from 0 to {most}, not {value!r}")
    if cfg.session_tasks is None or 0 < cfg.session_tasks < MIN_SESSION_TASKS:
        raise ConfigError(f"session_tasks must be 0 (no bound) or at least {MIN_SESSION_TASKS} (a runner alone has a "
                          f"dozen threads), not {cfg.session_tasks!r}")
    if cfg.memory_total is not None:
        # at least 64M: a TOML integer is bytes, and `memory_total = 16` (16 GiB meant) fitted no session at all
        cfg = replace(cfg, memory_total=size_setting("memory_total", cfg.memory_total,
                                                     "a size of at least 64M with its unit, like 16G", least=64 << 20))
    cfg = replace(cfg, max_output=max_output_setting(cfg.max_output))
    cfg = replace(cfg, max_unread_replies=size_setting("max_unread_replies", cfg.max_unread_replies,
                                                "a size of at least 1M, like 256M", least=1024 * 1024))
    if cfg.max_session_record in (None, False, 0, "none"):  # as max_output: "none", false or 0
        cfg = replace(cfg, max_session_record=None)
    else:
        cfg = replace(cfg, max_session_record=size_setting("max_session_record", cfg.max_session_record,
                                                    'a size of at least 1M, like 8G, or "none"', least=1024 * 1024))
    if cfg.memory_ceiling in (None, False, 0, "none"):
        cfg = replace(cfg, memory_ceiling=None)
    elif cfg.memory_ceiling == "auto":
        cfg = replace(cfg, memory_ceiling=auto_ceiling())
    else:
        cfg = replace(cfg, memory_ceiling=size_setting("memory_ceiling", cfg.memory_ceiling,
                                                'a size of at least 64M, like 4G, "auto" or "none"', least=64 << 20))
    # within what each is for: a grace of 1e300 s never reached SIGTERM (nor ended a drain); a monitor interval of
    # 1e-9 s spun the daemon's CPU, one of hours left memory limits unwatched
    for name, low, high in (("stop_grace", 0.0, 86400.0), ("term_grace", 0.0, 86400.0),
                              ("sample_interval", 0.01, 3600.0), ("limit_interval", 0.01, 3600.0),
                              ("record_interval", 0.01, 3600.0)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not low <= value <= high or value <= 0:
            raise ConfigError(f"{name} must be a number of seconds " + (f"from {low:g}" if low else "over 0")
                              + f" to {high:g}, not {value!r}")
    if isinstance(cfg.max_message, bool) or not isinstance(cfg.max_message, int) \
            or not 4096 <= cfg.max_message <= MAX_MAX_MESSAGE:
        raise ConfigError(f"max_message must be a whole number of bytes from 4096 to {MAX_MAX_MESSAGE} (1 GiB), "
                          f"not {cfg.max_message!r}")
    if cfg.listen is not None:
        from labd.daemon.gateway import ListenError, check_listen

        try:
            check_listen(str(cfg.listen))
        except ListenError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.retention is not None:
        if not isinstance(cfg.retention, str):
            raise ConfigError(f"retention must be a duration like \"30d\", not {cfg.retention!r}")
        if re.fullmatch(r"\s*[0-9.]+\s*", cfg.retention):  # "30" meant 30 days, and deleted what ended 30 s ago
            raise ConfigError(f"retention {cfg.retention.strip()!r} has no unit: write e.g. \"30d\", \"12h\" or "
                              "\"90m\" (a session is deleted that long after it ended)")
        try:
            parse_duration(cfg.retention)
        except UnitError as exc:
            raise ConfigError(f"retention: {exc}") from None
    terminal = {"completed", "failed", "cancelled", "lost"}
    if not isinstance(cfg.retention_statuses, list) or not set(cfg.retention_statuses) <= terminal \
            or not cfg.retention_statuses:
        raise ConfigError(f"retention_statuses must be a non-empty list of {sorted(terminal)}")
    for name in ("secret_env", "preload"):
        if not isinstance(getattr(cfg, name), list) or not all(isinstance(x, str) for x in getattr(cfg, name)):
            raise ConfigError(f"{name} must be a list of strings")
    bad = [n for n in cfg.secret_env if not n or re.search(r"[=\s\x00]", n)]
    if bad:  # "" or "A B" can name no variable: a misspelt list withheld nothing it meant to
        raise ConfigError(f"secret_env: {bad[0]!r} is not the name of an environment variable (no spaces, no '=')")
    for module in cfg.preload:
        # the template imports these before it forks any runner: one it cannot import killed it at every start,
        # and the daemon, waiting for it, never served (a restart loop under systemd). Only the top-level package
        # is looked up: finding a submodule would import (run) its package here.
        top = module.split(".", 1)[0]
        if not top.isidentifier() or importlib.util.find_spec(top) is None:
            raise ConfigError(f"preload: no module {module!r} can be imported (is it installed in the daemon's "
                              "Python, or on its PYTHONPATH?)")
    return replace(cfg, home=Path(cfg.home))
