"""The checks of the merged daemon settings (:func:`check_settings`): each value in its range and form, sizes and
durations parsed. Every message starts with the setting's name, so that :func:`labd.daemon.config.load_config` can
say where the value was given (which file, variable or flag)."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import replace
from typing import Any

from labd.daemon.config_tables import ConfigError, max_output_setting, size_setting
from labd.daemon.inbound import auto_ceiling
from labd.daemon.limits import MAX_PROCS
from labd.ipc.units import UnitError, parse_duration

__all__ = ["check_settings", "MAX_MAX_MESSAGE", "MIN_SESSION_NOFILE", "MAX_SESSION_NOFILE", "MIN_SESSION_TASKS",
           "MAX_SESSION_TASKS"]

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


def check_settings(cfg: Any) -> Any:
    """``cfg`` (a :class:`labd.daemon.config.Config`) checked, its sizes parsed; :class:`ConfigError` naming the
    setting first."""
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
            raise ConfigError(f"listen: {exc}") from None
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
    return cfg
