"""The connection file: how clients and runners find a daemon's sockets and signing key.

Written by the daemon into its runtime directory with mode 0600 (only the user can read the key).
It is removed when the daemon stops; the key itself lives in ``<home>/daemon.key`` (0600) so that
runners which outlived a daemon can talk to its successor.

It also names the daemon process (``pid``, its start time ``started`` and, on Linux, ``start_ticks``), so
a client tells a dead daemon (killed, crashed: the file stays behind) from a slow one at once instead of
waiting for a reply timeout; the start time guards against a recycled pid. ``start_ticks`` (field 22 of
``/proc/<pid>/stat``) is fixed at fork and compared exactly; ``started`` (seconds since the epoch) is derived
from the boot time, which the kernel may shift by a second (clock steps, suspend), so it is compared loosely
and only when ``/proc`` cannot be read.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import stat
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import psutil
import zmq
from zmq.utils import z85

from labd.ipc.paths import Layout, UnsafeRuntimeDir
from labd.ipc.safe_files import read_regular

__all__ = ["ConnectionInfo", "write_connection_file", "read_connection_file", "ConnectionFileError",
           "process_start_time", "process_start_ticks", "daemon_alive", "UnsafeConnectionFile", "events_socket",
           "client_socket", "local_events_keypair", "local_events_credentials", "EVENTS_USER",
           "BadConnectionFile"]


class ConnectionFileError(Exception):
    """The connection file is missing, unreadable or untrustworthy: no usable daemon for this home."""


class BadConnectionFile(ConnectionFileError):
    """The connection file has a field a client cannot use (a wrong type, a malformed key or endpoint)."""


class UnsafeConnectionFile(ConnectionFileError):
    """The connection file or its directory could have been written by someone else: not trusted."""


@dataclass(frozen=True)
class ConnectionInfo:
    """Endpoints and key of one daemon, and which process it is."""

    control: str
    events: str
    runners: str
    key: str  # hex
    pid: int
    home: str
    started: float | None = None  # the daemon process's start time (psutil create_time); None: older daemon
    start_ticks: int | None = None  # its start in clock ticks since boot (/proc/<pid>/stat field 22), Linux
    #: set for TCP clients (a file from `labd remote add`): CurveZMQ keys, Z85 text
    server_public: str | None = None
    client_public: str | None = None
    client_secret: str | None = None
    #: how a local daemon's event socket admits followers: ``"plain"``, ZeroMQ PLAIN with the credentials derived
    #: from ``key`` (:func:`local_events_credentials`), so code that cannot read this file cannot follow
    events_auth: str | None = None
    #: an older daemon's event socket was a CurveZMQ server with this public key (Z85), its clients' keypair
    #: derived from ``key`` (:func:`local_events_keypair`); kept so a new client follows a daemon started before
    events_public: str | None = None
    #: the largest request body (bytes) the daemon reads (its ``max_message``); None: an older daemon's file
    max_message: int | None = None

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot), or None (no such process, no
    ``/proc``). The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        return int(stat_line[stat_line.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def daemon_alive(info: ConnectionInfo) -> bool:
    """Whether the process the connection file names still runs (same pid *and* same start)."""
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if info.start_ticks is not None:
            ticks = process_start_ticks(info.pid)
            if ticks is not None:
                return ticks == info.start_ticks
        # no /proc: create_time = boot time + ticks, and the boot time may move by a second; a recycled pid
        # belongs to a process started after the daemon died, normally long after the daemon started
        return info.started is None or abs(proc.create_time() - info.started) < 2.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # exists, not ours to inspect (another namespace): assume alive
        return True


def write_connection_file(layout: Layout, pid: int, key: str, events_auth: str | None = None,
                          max_message: int | None = None) -> ConnectionInfo:
    """Write (atomically, 0600) the connection file for daemon process ``pid`` serving ``layout``."""
    path = layout.connection_file
    info = ConnectionInfo(control=layout.endpoint("control"), events=layout.endpoint("events"),
                          runners=layout.endpoint("runners"), key=key, pid=pid, home=str(layout.home),
                          started=process_start_time(pid), start_ticks=process_start_ticks(pid),
                          events_auth=events_auth, max_message=max_message)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.unlink()  # never write through something left in our place
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return info


#: the largest connection file read (one labd writes is under 1 KB; a home path is at most 4 KB)
MAX_CONNECTION_FILE = 64 * 1024


def read_connection_file(layout: Layout, path: Path | None = None) -> ConnectionInfo:
    """Read and check the connection file of ``layout`` (or ``path``: one written by ``labd remote add``).

    Refuses (:class:`ConnectionFileError`) a runtime directory that is not ours and private (local daemon
    only), and a file that is a symlink, not ours, or readable by others: its key signs requests and its
    endpoints get the key.
    """
    remote = path is not None
    path = path or layout.connection_file
    data: Any = None
    try:
        if not remote:
            layout.check_runtime_dir()
        # O_NONBLOCK: a FIFO at the path (`--connect` names any file) is refused below, not waited on for good
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise UnsafeConnectionFile(
                    f"refusing {path}: it must be a file of your own (uid {os.getuid()}, found uid {st.st_uid}) "
                    f"readable by you only (mode 0600, found {stat.S_IMODE(st.st_mode):04o})")
            os.set_blocking(fd, True)
            raw = f.read(MAX_CONNECTION_FILE + 1)  # not a huge file read whole
        if len(raw) > MAX_CONNECTION_FILE:
            raise BadConnectionFile(f"cannot read connection file {path}: larger than {MAX_CONNECTION_FILE:,} bytes, "
                                    "so not a labd connection file")
        data = json.loads(raw)
        known = {f.name for f in fields(ConnectionInfo)}
        info = ConnectionInfo(**{k: v for k, v in data.items() if k in known})  # missing fields: TypeError, below
        bad = _bad_field(data)
        if bad is not None:
            raise BadConnectionFile(f"cannot read connection file {path}: {bad}")
        return info
    except FileNotFoundError:
        if remote:
            raise ConnectionFileError(f"no connection file {path} (write one with `labd remote add NAME` on the "
                                      "daemon's machine)") from None
        elsewhere = _serving_elsewhere(layout)
        if elsewhere is not None and _has_socket(layout.runtime_dir / "control.sock"):
            # its sockets are in our runtime directory: it removes the file first thing as it stops, and writes it
            # last as it starts (its sockets are bound before and closed after)
            raise ConnectionFileError(
                f"the labd daemon serving home {layout.home} (pid {elsewhere}) is starting or stopping: it has no "
                f"{path} at the moment (see {layout.home / 'daemon.log'}); try again shortly") from None
        if elsewhere is not None:
            raise ConnectionFileError(
                f"the labd daemon serving home {layout.home} (pid {elsewhere}) cannot be reached from here: no {path}. "
                f"It was started with another runtime directory (XDG_RUNTIME_DIR is "
                f"{os.environ.get('XDG_RUNTIME_DIR') or 'unset'} here; a systemd user service has /run/user/"
                f"{os.getuid()}): run labd with the daemon's XDG_RUNTIME_DIR") from None
        raise ConnectionFileError(f"no labd daemon is running for home {layout.home} "
                                  f"(no {path}); start one with `labd serve`") from None
    except UnsafeRuntimeDir as exc:
        raise UnsafeConnectionFile(str(exc)) from None
    except ConnectionFileError:  # BadConnectionFile, UnsafeConnectionFile
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  #: O_NOFOLLOW met a symlink
            raise UnsafeConnectionFile(f"refusing {path}: it is a symlink") from None
        raise ConnectionFileError(f"cannot read connection file {path}: {exc}") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        given = data if isinstance(data, dict) else {}
        missing = [f.name for f in fields(ConnectionInfo) if f.default is MISSING and f.name not in given]
        why = (f"it lacks {', '.join(missing)}" if isinstance(exc, TypeError) and missing
               else "not a labd connection file (a JSON object with control, events, key, ...)")
        raise ConnectionFileError(f"cannot read connection file {path}: {why}") from None


def _serving_elsewhere(layout: Layout) -> int | None:
    """The pid of a live daemon of ours that serves ``layout``'s home (the pid its lock file names, titled ``labd:
    daemon (HOME)``), or None. Read only: taking the lock, even shared, could refuse a daemon starting meanwhile."""
    try:
        # a small regular file only: a FIFO there hung every client command, /dev/zero grew it without end
        pid = int(read_regular(layout.lock_file, 64).decode(errors="replace").strip() or 0)
        proc = psutil.Process(pid) if pid > 0 else None
        if proc is None or proc.uids().real != os.getuid() or \
                " ".join(proc.cmdline()).strip() != f"labd: daemon ({layout.home})":
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return pid


def _has_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


#: the fields of a connection file that name a socket (``runners`` is empty in a remote client's file)
_ENDPOINTS = ("control", "events", "runners")
#: the CurveZMQ keys of a remote client's file (Z85 text of 32 bytes)
_CURVE_KEYS = ("server_public", "client_public", "client_secret", "events_public")


def _bad_field(data: dict[str, Any]) -> str | None:
    """The first field of a connection file's object that a client could not use, said in words (its type or its
    form: a file edited or damaged by hand); None when every present field is as a daemon writes it."""
    for name in ("control", "events", "runners", "key", "home", "events_auth"):
        if name in data and not isinstance(data[name], str):
            return f"field {name!r} must be a string, not {type(data[name]).__name__}"
    for name in ("pid", "start_ticks", "max_message"):
        if data.get(name) is not None and (not isinstance(data[name], int) or isinstance(data[name], bool)):
            return f"field {name!r} must be an integer, not {data[name]!r:.40}"
    if data.get("started") is not None and (not isinstance(data["started"], int | float)
                                            or isinstance(data["started"], bool)):
        return f"field 'started' must be a number, not {data['started']!r:.40}"
    for name in _ENDPOINTS:
        value = data.get(name)
        if isinstance(value, str) and (value or name != "runners") and not value.startswith(("ipc://", "tcp://")):
            return f"field {name!r} must be an ipc:// or tcp:// endpoint, not {value!r:.80}"
    key = data.get("key")
    if isinstance(key, str):
        try:
            if len(bytes.fromhex(key)) < 16:
                return "field 'key' must be at least 16 bytes (32 hex digits)"
        except ValueError:
            return "field 'key' must be hex digits"
    for name in _CURVE_KEYS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) != 40:
            return f"field {name!r} must be a CurveZMQ key: 40 characters of Z85 text"
        try:
            z85.decode(value)
        except (ValueError, KeyError, IndexError):
            return f"field {name!r} must be a CurveZMQ key: 40 characters of Z85 text"
    return None


#: the PLAIN user name of a local follower (the password is what proves anything)
EVENTS_USER = b"labd"


def local_events_credentials(key: bytes) -> tuple[bytes, bytes]:
    """The ZeroMQ PLAIN (user, password) with which local clients follow a daemon's live events: derived from the
    daemon key, so it proves what the key proves (the connection file was readable) and needs no file of its own.
    ``password = hex(HMAC-SHA256(key, "labd events client v2"))``; docs/protocol.md §2."""
    return EVENTS_USER, hmac.new(key, b"labd events client v2", hashlib.sha256).hexdigest().encode()


def local_events_keypair(key: bytes) -> tuple[bytes, bytes]:
    """The CurveZMQ keypair (public, secret; Z85) with which clients follow the live events of a daemon
    of an earlier labd (its connection file has ``events_public``). ``secret = Z85(HMAC-SHA256(key, "labd events
    client v1"))``."""
    secret = z85.encode(hmac.new(key, b"labd events client v1", hashlib.sha256).digest())
    return zmq.curve_public(secret), secret


def client_socket(ctx: Any, info: ConnectionInfo, kind: int, *, events: bool = False) -> Any:
    """A socket of ``kind`` to ``info``'s daemon, not yet connected: a CurveZMQ client with the keys of a remote
    connection file; for the event socket (``events``) of a local daemon, a PLAIN client with the credentials
    derived from the key (:func:`local_events_credentials`), or for an older daemon's CURVE-secured socket, with
    the local keypair (:func:`local_events_keypair`)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if info.server_public:
        sock.curve_serverkey = info.server_public.encode()
        sock.curve_publickey = (info.client_public or "").encode()
        sock.curve_secretkey = (info.client_secret or "").encode()
    elif events and info.events_auth == "plain":
        sock.plain_username, sock.plain_password = local_events_credentials(info.key_bytes)
    elif events and info.events_public:
        public, secret = local_events_keypair(info.key_bytes)
        sock.curve_serverkey = info.events_public.encode()
        sock.curve_publickey, sock.curve_secretkey = public, secret
    return sock


def events_socket(ctx: Any, info: ConnectionInfo, kind: int | None = None) -> Any:
    """A ``SUB`` (or ``kind``) socket set up to follow ``info``'s event socket (:func:`client_socket`)."""
    return client_socket(ctx, info, zmq.SUB if kind is None else kind, events=True)
