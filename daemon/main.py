"""The daemon's one public entry point: what ``labd serve`` runs in the foreground.

Front-ends never import the daemon's other modules (frontends/__init__.py); starting a daemon is the one thing
the CLI asks of this package, and :func:`serve` is all it calls. Every way a start can fail before the daemon
serves (a bad configuration, another daemon on the home, an unsafe runtime directory, a bad ``--listen``, a
missing Ray, an unusable database, a runner template that does not start) ends with one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys

__all__ = ["serve", "check"]


def serve(home: str | os.PathLike[str] | None, *, db: str | None = None, log_format: str | None = None,
          log_level: str | None = None, listen: str | None = None, drain: bool = False) -> int:
    """Run a daemon on ``home`` until SIGTERM/SIGINT; its exit status (0; 1 if it failed while serving; 2 if it
    could not start). ``drain``: SIGTERM first stops every session (``labd serve --drain``)."""
    import sqlalchemy.exc
    from setproctitle import setproctitle

    from labd.daemon import logsetup
    from labd.daemon.config import ConfigError, load_config
    from labd.daemon.launcher import LaunchError
    from labd.daemon.startup import AlreadyRunning, begin
    from labd.daemon.store_identity import shown_url
    from labd.ipc.paths import UnsafeRuntimeDir

    try:
        cfg = load_config(home, db_url=db, log_format=log_format, log_level=log_level, listen=listen)
    except ConfigError as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(cfg.log_format, cfg.log_level)
    setproctitle(f"labd: daemon ({cfg.home})")
    try:
        # the runner template spawned first: it gets ready while the daemon's modules are imported (startup.py)
        startup = begin(cfg)
    except (AlreadyRunning, UnsafeRuntimeDir, LaunchError) as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    from labd.daemon.server import Daemon, GatewayError
    from labd.store.db import NewerSchema

    daemon = Daemon(cfg, drain=drain, startup=startup)
    try:
        daemon.serve()
    except (AlreadyRunning, GatewayError, UnsafeRuntimeDir, LaunchError) as exc:  # e.g. Ray not installed
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.SQLAlchemyError as exc:
        print(f"labd: cannot use the database {shown_url(cfg.db_url)}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    except NewerSchema as exc:  # a downgrade: one line, not Alembic's traceback
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    return 1 if daemon.failed else 0


def check(home: str | os.PathLike[str] | None, *, db: str | None = None, log_format: str | None = None,
          log_level: str | None = None, listen: str | None = None) -> int:
    """``labd serve --check``: read the configuration as :func:`serve` would (the config files, the environment,
    these flags) and say whether a daemon would start with it, without starting one: 0 and a summary on stdout, or
    2 and the one-line error :func:`serve` would print. For a running service's edited ``config.toml``, found bad
    only at its next restart otherwise (systemd then retries it again and again)."""
    from labd.daemon.config import ConfigError, config_files, load_config

    try:
        cfg = load_config(home, db_url=db, log_format=log_format, log_level=log_level, listen=listen)
    except ConfigError as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    from labd.daemon.store_identity import check_now, check_store, lock_holder, shown_url
    from labd.ipc.paths import UnsafeRuntimeDir
    from labd.store.db import probe

    try:
        check_store(cfg.layout, cfg.db_url)  # the home's sessions are this store's (store_identity)
        lock_holder(str(cfg.layout.lock_file))  # a lock file serve would refuse (a symlink, a FIFO): refused here too
        # the database itself: reachable, writable (serve would fail on it at its start), this home's, not older
        # than the home saw it, and no other daemon writing it
        probe(cfg.db_url, also=lambda conn: check_now(cfg.layout, cfg.db_url, conn))
    except (ValueError, UnsafeRuntimeDir) as exc:
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    read = [str(p) for p in config_files(cfg.layout) if p.is_file()]
    print(f"configuration OK: home {cfg.home}, database {shown_url(cfg.db_url)}; "
          f"read {', '.join(read) if read else 'no config file (defaults)'}")
    running = lock_holder(str(cfg.layout.lock_file))
    if running is not None:  # the check of a running service's edited config: it is not using it yet (admin review)
        print(f"this home's daemon ({running}) runs now, with the configuration it started with: restart it to use "
              "this one (`systemctl --user restart labd` under systemd, else `labd shutdown` and `labd serve`)")
    return 0
