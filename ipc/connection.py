"""The connection file: how clients and runners find a daemon's sockets and signing key.

Written by the daemon into its runtime directory with mode 0600 (only the user can read the key).
It is removed when the daemon stops; the key itself lives in ``<home>/daemon.key`` (0600) so that
runners which outlived a daemon can talk to its successor.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from labd.ipc.paths import Layout

__all__ = ["ConnectionInfo", "write_connection_file", "read_connection_file", "ConnectionFileError"]


class ConnectionFileError(Exception):
    """The connection file is missing or unreadable: no daemon is running for this home."""


@dataclass(frozen=True)
class ConnectionInfo:
    """Endpoints and key of one daemon."""

    control: str
    events: str
    runners: str
    key: str  # hex
    pid: int
    home: str
    #: set for TCP clients (a file from `labd remote add`): CurveZMQ keys, Z85 text
    server_public: str | None = None
    client_public: str | None = None
    client_secret: str | None = None

    @property
    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.key)


def write_connection_file(layout: Layout, pid: int, key: str) -> ConnectionInfo:
    """Write (atomically, 0600) the connection file for a daemon serving ``layout``."""
    path = layout.connection_file
    info = ConnectionInfo(control=layout.endpoint("control"), events=layout.endpoint("events"),
                          runners=layout.endpoint("runners"), key=key, pid=pid, home=str(layout.home))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return info


def read_connection_file(layout: Layout, path: Path | None = None) -> ConnectionInfo:
    """The daemon's connection file (or ``path``: one written by ``labd remote add``); it must be private."""
    path = path or layout.connection_file
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ConnectionFileError(f"refusing {path}: it must belong to you and be private (mode 0600)")
        data = json.loads(path.read_text())
        return ConnectionInfo(**data)
    except FileNotFoundError:
        raise ConnectionFileError(f"no labd daemon is running for home {layout.home} "
                                  f"(no {path}); start one with `labd serve`") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ConnectionFileError(f"cannot read connection file {path}: {exc}") from None
