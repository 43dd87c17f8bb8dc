"""The first steps of ``labd serve``, taken before the daemon's own modules are imported.

Importing the daemon (the store, the request handlers, SQLAlchemy, ...) takes ~0.9 s; the runner template, which
imports the runner stack (ag2 among it) once for every session it forks, takes ~2 s to be ready. They used to
happen one after the other. So this module, which imports nothing heavy, does what the template depends on and
spawns it; the daemon (:class:`labd.daemon.server.Daemon`) is imported meanwhile and waits for the template's
``ready`` only where it needs it. On a loaded box that measured 0.90-0.97x of the time to ready (docs/benchmarks.md
§34: a start is ~2.8 s of CPU, which busy cores cannot overlap); an idle box has room to overlap more of it.

What the template depends on, in order:

1. The home's lock: a second ``labd serve`` on the same home stops here, before it spawns anything.
2. The file descriptor limits (:func:`fd_limits`): the template inherits the daemon's.
3. The service manager's variables taken out of the environment (:class:`labd.daemon.systemd.Notifier`), and the
   secrets split from it (:func:`labd.runner.secret_env.split_secrets`): the template, and so every session,
   inherits that environment.

A daemon that fails before it waits for the template (a bad ``--listen``, an unusable database) leaves nothing
running: the template ends when its stdin, the daemon's pipe, closes with the daemon.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from labd.daemon.config import Config
from labd.daemon.store_identity import check_store, lock_store
from labd.daemon.systemd import Notifier
from labd.daemon.template_launcher import TemplateLauncher
from labd.ipc.paths import UnusableHome
from labd.ipc.safe_files import open_regular, read_regular, write_atomic
from labd.runner.secret_env import OTEL_HEADER_VARS, split_secrets, store_withheld
from labd.store.urls import url_passwords

__all__ = ["AlreadyRunning", "Startup", "begin", "signing_key"]


class AlreadyRunning(RuntimeError):
    """Another daemon holds this home's lock."""


@dataclass
class Startup:
    """What :func:`begin` did, handed to the daemon."""

    lock_fd: int  # holds ``<home>/labd.lock`` (flock) for as long as the daemon runs
    notifier: Notifier
    nofile: dict[str, Any]  # fd_limits' figures
    clean_env: dict[str, str]  # the environment without secrets: the template's and every launcher's
    secrets: dict[str, str]  # the secrets taken out of it: given to runners in their spec
    template: TemplateLauncher  # spawned, maybe not ready yet (TemplateLauncher.start waits)
    store_fd: int | None = None  # holds a SQLite store's ``.labd-lock`` (daemon/store_identity.py)


def fd_limits(session_nofile: int, log: Any) -> dict[str, Any]:
    """The daemon's RLIMIT_NOFILE raised to its hard limit, as servers do (the soft default, 1024 under systemd,
    is for programs that use select(); this one holds a connection per client, runner and session's socket), and
    the sessions' limit (``[daemon] session_nofile``, at most the hard limit; 0: inherited). Logs the figures."""
    was, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = was
    if hard != resource.RLIM_INFINITY and was < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the file descriptor limit", soft=was, hard=hard, error=str(exc))
    sessions = min(session_nofile, hard) if session_nofile else 0
    log.info("file descriptor limits", soft=soft, hard=hard, soft_at_start=was, sessions=sessions or "inherited")
    if not sessions or sessions * 4 > soft:
        log.warning("sessions may hold a good part of the daemon's file descriptors: a session that opens many "
                    "connections to the daemon can exhaust them (raise the hard limit: LimitNOFILE=, ulimit -Hn; "
                    "or lower [daemon] session_nofile)", daemon_soft=soft, sessions=sessions or "inherited")
    return {"daemon": {"soft": soft, "hard": hard, "soft_at_start": was}, "sessions": sessions or None}


def _lock(cfg: Config) -> int:
    layout = cfg.layout
    layout.ensure()
    try:  # a read-only filesystem, a full disk: one line, as for a home that cannot be made (main.py)
        os.chmod(layout.home, 0o700)  # sessions' outputs and the database are the user's alone
        # not through a symlink (its target was truncated and given the pid), and only a regular file (a FIFO
        # there was a traceback): attack retest
        fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{layout.lock_file} is not a regular file (remove it)")
    except OSError as exc:
        why = f"{layout.lock_file} is a symbolic link (remove it)" if exc.errno == errno.ELOOP else \
            exc.strerror or str(exc)
        raise UnusableHome(f"cannot use {layout.home} as labd's home: {why}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            other = read_regular(layout.lock_file, 64).decode(errors="replace").strip() or "?"
        except OSError:
            other = "?"
        raise AlreadyRunning(f"another labd daemon (pid {other}) is already serving home {layout.home}") from None
    os.ftruncate(fd, 0)
    try:
        os.write(fd, str(os.getpid()).encode())
    except OSError as exc:
        os.close(fd)
        raise UnusableHome(f"cannot use {layout.home} as labd's home: {exc.strerror or exc}") from None
    return fd


def begin(cfg: Config) -> Startup:
    """Take the home's lock, raise the fd limit, clean the environment and spawn the runner template (not waiting
    for it). Raises :class:`AlreadyRunning` if another daemon serves the home."""
    fd = _lock(cfg)
    store_fd: int | None = None
    try:
        check_store(cfg.layout, cfg.db_url)  # under the lock: before anything could take its sessions for gone
        store_fd = lock_store(cfg.layout, cfg.db_url)  # held, as the home's lock, until the process exits
        nofile = fd_limits(cfg.session_nofile, structlog.get_logger("labd.daemon"))  # before any socket
        # before the template: it takes NOTIFY_SOCKET & co. out of the environment the template and runners inherit
        notifier = Notifier()
        # The template (and so every runner) starts without secrets in its environment: code a session
        # runs cannot find them in os.environ nor in /proc/<pid>/environ. Runners get them in their spec.
        # The collector's credentials ([telemetry] headers_env) are the daemon's: neither in a session's environment
        # nor among the secrets it may read (a name like HONEYCOMB_TEAM matches no secret pattern)
        collector = set((cfg.telemetry.get("headers_env") or {}).values())
        if cfg.telemetry.get("otlp_endpoint"):  # OpenTelemetry's own header variables too, which the exporter reads
            collector.update(OTEL_HEADER_VARS)
        clean_env, secrets = split_secrets(dict(os.environ), [*cfg.secret_env, *collector])
        secrets = {k: v for k, v in secrets.items() if k not in collector}
        secrets = store_withheld(secrets, url_passwords(cfg.db_url), cfg.db_url.startswith("postgresql"))
        template = TemplateLauncher(env=clean_env, preload=cfg.preload, spare_runners=cfg.spare_runners,
                                    runner_nice=cfg.runner_nice, session_nofile=nofile["sessions"] or 0)
        template.spawn()
    except BaseException:
        os.close(fd)
        if store_fd is not None:
            os.close(store_fd)
        raise
    return Startup(fd, notifier, nofile, clean_env, secrets, template, store_fd)


def signing_key(home: Path) -> str:
    """The signing key, kept in ``<home>/daemon.key`` (0600) so runners survive daemon restarts."""
    path = home / "daemon.key"
    try:  # not through a symlink, nor from a FIFO or a device (it hung the start, or overwrote a link's target)
        with open_regular(path) as f:
            key = f.read(4096).decode("ascii", "replace").strip()
        bytes.fromhex(key)
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    except ValueError:  # damaged: a new one
        pass
    except OSError as exc:
        raise UnusableHome(f"cannot read {path}: {exc.strerror or exc} (remove it)") from None
    key = secrets.token_hex(32)
    write_atomic(path, key.encode(), 0o600)
    return key
