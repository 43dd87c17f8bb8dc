"""systemd integration with no dependency: sd_notify over ``NOTIFY_SOCKET``, the watchdog, journald priorities.

The daemon runs under ``Type=notify``: it sends ``READY=1`` once migrations ran, its sockets are bound, the
runner template is up and the connection file is written (so a unit ordered after labd can use it at once),
``STATUS=`` lines with what it is doing, ``WATCHDOG=1`` (every third of ``WatchdogSec``) only while its main
loop turns and its ingest thread is alive and not stuck, and ``STOPPING=1`` when it stops. Outside systemd
(no ``NOTIFY_SOCKET``) every call is a cheap no-op. The protocol is one datagram of ``KEY=VALUE`` lines to
an ``AF_UNIX`` socket, whose address starts with ``@`` for the abstract namespace (sd_notify(3)).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["Notifier", "Heartbeat", "journal_prefixer", "under_journald", "JOURNAL_PRIORITIES"]

#: syslog priorities journald reads from a ``<N>`` line prefix (SyslogLevelPrefix=yes, the default)
JOURNAL_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


class Notifier:
    """Messages to the service manager, if there is one.

    Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``env`` and removes them, as
    ``sd_notify(unset_environment=1)`` does: the runner template and every session inherit the daemon's
    environment, and none of them may speak for the daemon to systemd.
    """

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        wpid = env.pop("WATCHDOG_PID", "")
        self.log = structlog.get_logger("labd.systemd")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]  # abstract namespace
        elif addr.startswith("/"):
            self.address = addr
        #: seconds between watchdog pings systemd expects at least (None: no watchdog for us)
        self.watchdog_timeout: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            self.watchdog_timeout = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: Any) -> bool:
        """Send ``KEY=value`` lines in one datagram (``ready=1`` becomes ``READY=1``); False if not sent."""
        if self.address is None:
            return False
        text = "\n".join(f"{k.upper()}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self.address)
            return True
        except OSError as exc:
            if not self._failed:  # say it once: a vanished manager must not flood the log
                self._failed = True
                self.log.warning("cannot notify the service manager", socket=self.address.lstrip("\0"),
                                 error=str(exc))
            return False

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def stopping(self, status: str) -> bool:
        return self.send(stopping=1, status=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Heartbeat:
    """Called from the daemon's main loop: STATUS= every few seconds, WATCHDOG=1 only when healthy.

    The main loop calling :meth:`tick` at all is the proof that it turns; ``healthy`` says whether the
    rest (the ingest thread) is fine. An unhealthy daemon gets no pings, so systemd restarts it after
    ``WatchdogSec`` (sessions keep running and are adopted by the new daemon).
    """

    def __init__(self, notifier: Notifier, status_every: float = 5.0) -> None:
        self.notifier = notifier
        self.status_every = status_every
        timeout = notifier.watchdog_timeout
        # systemd advises half the timeout; a third leaves room for a main-loop iteration that blocks a while
        self.ping_every = None if timeout is None else max(0.05, timeout / 3)
        self._last_ping = 0.0
        self._last_status = 0.0
        self._last_events: tuple[float, int] | None = None
        self._status = ""
        self.withheld = 0  # pings not sent because the daemon was unhealthy

    def tick(self, healthy: bool, running: int, events_total: int, problem: str = "", note: str = "") -> None:
        """One main-loop turn: ``problem`` says why the daemon is not healthy; ``note`` is a trouble it waits out
        (the store down: a restart would not bring it back), shown in STATUS all the same."""
        if not self.notifier.enabled:
            return
        now = time.monotonic()
        if self.ping_every is not None and now - self._last_ping >= self.ping_every:
            self._last_ping = now
            if healthy:
                self.notifier.send(watchdog=1)
            else:
                self.withheld += 1
                if self.withheld == 1:
                    self.notifier.log.error("watchdog ping withheld: the daemon is not healthy", problem=problem)
        if now - self._last_status >= self.status_every:
            self._last_status = now
            rate = 0.0
            if self._last_events is not None and now > self._last_events[0]:
                rate = (events_total - self._last_events[1]) / (now - self._last_events[0])
            self._last_events = (now, events_total)
            status = f"{running} session{'s' if running != 1 else ''} running, {rate:.0f} events/s"
            if not healthy:
                status += f"; UNHEALTHY: {problem}"
            if note:
                status += f"; {note}"
            if status != self._status:
                self._status = status
                self.notifier.send(status=status)


def journal_prefixer(renderer: Any) -> Any:
    """Wrap a structlog renderer so each line starts with ``<N>``, its syslog priority, for journald.

    journald then files the line at that priority (``journalctl -p warning`` works) and strips the prefix.
    """

    def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", name)).lower()
        return f"<{JOURNAL_PRIORITIES.get(level, 6)}>{renderer(logger, name, event_dict)}"

    return render


def under_journald(stream: Any) -> bool:
    """Whether ``stream`` (stderr) is connected to journald: ``JOURNAL_STREAM`` names its device:inode."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)
