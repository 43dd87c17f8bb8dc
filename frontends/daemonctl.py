"""Starting and stopping the daemon from scripts: ``labd serve --detach``, ``labd wait`` and ``labd shutdown``.

``serve --detach`` starts ``labd serve`` as a detached process (own session, stdin closed, output to a log
file in the home) and returns only once that very process answers a ping, so the next command works at
once; if it exits first (another daemon already serves the home, a bad config) it says why and fails.
``shutdown`` sends the local daemon SIGTERM, exactly what ``systemctl stop`` or Ctrl-C does, and waits until the
process is gone: the operating system decides who may (the daemon's own user), so no request on the wire can
stop a daemon, and a remote client cannot.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from labd.ipc.client import Client, LabdError
from labd.ipc.connection import ConnectionFileError, daemon_alive, read_connection_file
from labd.ipc.paths import Layout, UnusableHome, layout_for
from labd.ipc.ready import wait_for_daemon

__all__ = ["serve_detached", "wait", "shutdown", "DETACH_TIMEOUT"]

DETACH_TIMEOUT = 60.0  # first start: migrations and the runner template's imports take a few seconds


def _tail(path: Path, lines: int = 15, start: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written from byte ``start`` on (what our daemon wrote, not what an
    earlier one left in the shared log)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _running(layout: Layout) -> int | None:
    """The pid of the daemon already serving ``layout``'s home, if its process lives (read from the home's own
    connection file: never a remote daemon that ``$LABD_CONNECTION_FILE`` names)."""
    try:
        info = read_connection_file(layout)
    except ConnectionFileError:
        return None
    return info.pid if daemon_alive(info) else None


def serve_detached(args: argparse.Namespace, home: str | None) -> int:
    """``labd serve --detach``: start a daemon in the background and wait until it is ready."""
    layout = layout_for(home)
    try:
        layout.ensure_home()  # here, not only in the daemon: its log goes into the home
    except UnusableHome as exc:  # said as `labd serve` says it
        print(f"labd: {exc}", file=sys.stderr)
        return 2
    log_path = layout.home / "daemon.log"
    pid = _running(layout)
    if pid is not None:  # checked first: a second daemon would only fail on the home's lock, in the shared log
        if args.db or getattr(args, "listen", None):
            print(f"labd: a daemon (pid {pid}) is already serving {layout.home}; stop it first (labd shutdown) to "
                  "serve with other options", file=sys.stderr)
            return 2
        print(f"labd daemon pid {pid} already serving {layout.home}; log: {log_path}")
        return 0
    # -P: a ./labd folder where the user stands must not shadow the package
    argv = [sys.executable, "-P", "-m", "labd", "--home", str(layout.home), "serve"]
    for flag, value in (("--db", args.db), ("--log-format", args.log_format or "json"),
                        ("--log-level", args.log_level), ("--listen", getattr(args, "listen", None))):
        if value:
            argv += [flag, value]
    if args.drain:
        argv.append("--drain")
    try:
        log = open(log_path, "ab")  # noqa: SIM115 - closed below, once the daemon has it
    except OSError as exc:
        print(f"labd: cannot write the daemon's log {log_path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with log:
        start = log.seek(0, os.SEEK_END)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + DETACH_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            print(f"labd: the daemon exited with code {code} before it was ready; the end of {log_path}:\n"
                  f"{_tail(log_path, start=start)}", file=sys.stderr)
            return 2
        try:
            with Client(layout.home, timeout=1.0) as c:
                if c.ping().get("pid") == proc.pid:  # our daemon, not one that was already there
                    print(f"labd daemon pid {proc.pid} serving {layout.home}; log: {log_path}")
                    return 0
        except LabdError as exc:
            if exc.code not in ("no_daemon", "timeout"):
                raise
        if time.monotonic() > deadline:
            print(f"labd: the daemon (pid {proc.pid}) did not answer within {DETACH_TIMEOUT:g}s; it keeps "
                  f"starting in the background; see {log_path}", file=sys.stderr)
            return 2
        time.sleep(0.05)


def wait(home: str | None, timeout: float) -> int:
    """``labd wait``: block until the daemon answers; exit 2 (``LabdError`` timeout) after ``timeout``."""
    pong = wait_for_daemon(home, timeout=timeout)
    print(f"labd daemon pid {pong.get('pid')} ready")
    return 0


def shutdown(home: str | None, timeout: float) -> int:
    """``labd shutdown``: stop the daemon of ``home`` (SIGTERM) and wait until its process is gone.

    Sessions keep running and the next ``labd serve`` adopts them, unless the daemon serves with ``--drain``:
    then it first stops them (the ordinary stop ladder). Exit 0 once the daemon is gone; 2 if there is none,
    or it is still there after ``timeout`` seconds (a draining daemon waits for its sessions)."""
    layout = layout_for(home)
    try:
        with Client(layout.home, timeout=5.0) as c:
            status = c.status()
        info = read_connection_file(layout)
    except LabdError as exc:
        raise LabdError(exc.code, f"nothing to stop: {exc.message}") from None
    except ConnectionFileError as exc:
        raise LabdError("no_daemon", f"nothing to stop at {layout.home}: {exc}") from None
    pid = int(status.get("pid") or 0)
    if pid != info.pid or not daemon_alive(info):  # the connection file names the process we may signal
        raise LabdError("no_daemon", f"the daemon that answered (pid {pid}) is not the one {layout.home} names")
    running = len(status.get("running") or [])
    os.kill(pid, signal.SIGTERM)
    print(f"stopping labd daemon pid {pid} ...", file=sys.stderr)
    deadline = time.monotonic() + timeout
    while daemon_alive(info):
        if time.monotonic() > deadline:
            why = ("it serves with --drain: it stops its sessions first" if status.get("drain") else
                   "its store could not be written when asked to stop" if not (status.get("store") or {}).get(
                       "writable", True) else "its sessions keep running")
            print(f"labd: daemon pid {pid} is still stopping after {timeout:g}s ({why}; see "
                  f"{layout.home / 'daemon.log'})", file=sys.stderr)
            return 2
        time.sleep(0.05)
    kept = ("" if not running else
            f"; it stopped its {running} running session{'s' * (running > 1)} first (serve --drain)"
            if status.get("drain") else
            f"; {running} session keeps running (the next `labd serve` adopts it)" if running == 1 else
            f"; {running} sessions keep running (the next `labd serve` adopts them)")
    print(f"labd daemon pid {pid} stopped{kept}")
    return 0
