"""Where a labd home keeps its data, and where its daemon puts sockets and the connection file.

The data home (database, session work directories, logs) comes from ``--home`` / ``LABD_HOME`` or the
XDG data directory. Sockets live in a per-user runtime directory (mode 0700). Several daemons can run
side by side, one per home, so the runtime directory is keyed by a short hash of the home path; the
hash keeps ``ipc://`` paths well under the ~100-byte limit of Unix socket addresses.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["Layout", "resolve_home", "layout_for"]

HOME_ENV = "LABD_HOME"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the data home: the argument, else ``$LABD_HOME``, else the XDG user data dir."""
    if home is None:
        home = os.environ.get(HOME_ENV) or platformdirs.user_data_dir("labd", appauthor=False)
    return Path(home).expanduser().resolve()


def _runtime_base() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg)
    # No XDG runtime dir (containers, cron): a per-user directory under the system temp dir.
    return Path(tempfile.gettempdir()) / f"labd-{os.getuid()}"


@dataclass(frozen=True)
class Layout:
    """All paths of one labd home."""

    home: Path
    runtime_dir: Path

    @property
    def connection_file(self) -> Path:
        return self.runtime_dir / "connection.json"

    @property
    def lock_file(self) -> Path:
        return self.home / "labd.lock"

    @property
    def sessions_dir(self) -> Path:
        return self.home / "sessions"

    @property
    def default_db_url(self) -> str:
        return f"sqlite:///{self.home / 'labd.db'}"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.runtime_dir / name}.sock"

    def ensure(self) -> None:
        """Create the home and the runtime directory (0700) if missing."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        base = self.runtime_dir.parent
        if not os.environ.get("XDG_RUNTIME_DIR"):  # our own /tmp/labd-<uid>: nobody else may look in
            base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(base.parent, 0o700)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)


def layout_for(home: str | os.PathLike[str] | None = None) -> Layout:
    """The layout of a home (see :func:`resolve_home`)."""
    h = resolve_home(home)
    digest = hashlib.sha256(str(h).encode()).hexdigest()[:10]
    return Layout(home=h, runtime_dir=_runtime_base() / "labd" / digest)
