"""Where a labd home keeps its data, and where its daemon puts sockets and the connection file.

The data home (database, session work directories, logs) comes from ``--home`` / ``LABD_HOME`` or the
XDG data directory. Sockets live in a per-user runtime directory (mode 0700). Several daemons can run
side by side, one per home, so the runtime directory is keyed by a short hash of the home path; the
hash keeps ``ipc://`` paths well under the ~100-byte limit of Unix socket addresses.

Whoever controls the runtime directory controls the sockets (a listener put in place of
``runners.sock`` reads every session's output), so daemon and clients check, before they use it, that
every directory of it labd creates belongs to the current user and is private (0700), and that the
base (``$XDG_RUNTIME_DIR``) belongs to the user and is writable by nobody else. They never "fix" a
directory that fails the check: another local user may have made it (e.g. under a shared ``TMPDIR``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

__all__ = ["Layout", "resolve_home", "layout_for", "UnsafeRuntimeDir", "UnusableHome", "check_private"]

HOME_ENV = "LABD_HOME"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the data home: the argument, else ``$LABD_HOME``, else the XDG user data dir."""
    if home is None:
        home = os.environ.get(HOME_ENV) or platformdirs.user_data_dir("labd", appauthor=False)
    return Path(home).expanduser().resolve()


class UnsafeRuntimeDir(Exception):
    """A runtime directory (or the connection file) is not the current user's alone: labd refuses to use it."""


class UnusableHome(UnsafeRuntimeDir):
    """The home cannot be a directory of labd's: a file is in its place, or it cannot be created (a missing parent
    that cannot be made, no permission). The message names the path and why. A kind of :class:`UnsafeRuntimeDir`,
    so that what refuses a bad runtime directory in one line (``labd serve``) refuses a bad home so too."""


def _unusable_home(home: Path, path: Path, exc: OSError) -> UnusableHome:
    """Why ``path`` (the home or a directory in it) could not be created: what is in the way, else the error."""
    def name(p: Path) -> str:
        return "it" if p == home else str(p)

    def mode(p: Path) -> int | None:
        try:
            return os.stat(p).st_mode
        except OSError:  # missing, or not ours to look at
            return None

    # mkdir(exist_ok=True) fails on an existing non-directory (FileExistsError), or one among the parents (ENOTDIR)
    modes = ((p, mode(p)) for p in (path, *path.parents))
    blocker = next(((p, m) for p, m in modes if m is not None and not stat.S_ISDIR(m)), None)
    if blocker is not None:
        why = f"{name(blocker[0])} is {'a file' if stat.S_ISREG(blocker[1]) else 'not a directory'}"
    else:
        failed = Path(exc.filename) if exc.filename else path
        why = f"cannot create {name(failed)}: {exc.strerror or exc}"
    return UnusableHome(f"cannot use {home} as labd's home: {why}")


def check_private(path: Path, *, exact: bool = True) -> None:
    """Raise :class:`UnsafeRuntimeDir` unless ``path`` is a real directory (no symlink) owned by us.

    ``exact``: mode must be 0700 (no group/other bits at all); otherwise only group/other write is refused
    (for ``$XDG_RUNTIME_DIR``, which the system creates).
    """
    st = os.lstat(path)
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRuntimeDir(f"refusing runtime directory {path}: it is not a directory (a symlink?)")
    if st.st_uid != uid:
        raise UnsafeRuntimeDir(f"refusing runtime directory {path}: it belongs to uid {st.st_uid}, not to you "
                               f"(uid {uid}); another user may have created it. Remove it, or set "
                               f"XDG_RUNTIME_DIR/TMPDIR to a directory of your own")
    bad = 0o077 if exact else 0o022
    if st.st_mode & bad:
        raise UnsafeRuntimeDir(f"refusing runtime directory {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other "
                               f"users in (must be 0700); check what is in it, then `chmod 700 {path}`")


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

    def _private_chain(self) -> list[Path]:
        """The runtime directories labd creates itself, outermost first (each must be ours and 0700)."""
        labd_dir = self.runtime_dir.parent
        chain = [labd_dir, self.runtime_dir]
        if labd_dir.parent.name == f"labd-{os.getuid()}":  # no XDG runtime dir: <tmp>/labd-<uid> is ours too
            chain.insert(0, labd_dir.parent)
        return chain

    def check_runtime_dir(self) -> None:
        """Raise :class:`UnsafeRuntimeDir` unless the runtime directory and its parents are ours and private.

        Clients call this before they trust the connection file; a missing directory raises
        ``FileNotFoundError`` (no daemon).
        """
        chain = self._private_chain()
        base = chain[0].parent  # $XDG_RUNTIME_DIR, or the shared temp dir (sticky, not ours: not checked)
        if base != Path(tempfile.gettempdir()):
            check_private(base, exact=False)
        for d in chain:
            check_private(d)

    def ensure_home(self) -> None:
        """Create the home and its sessions directory if missing; raise :class:`UnusableHome` (naming the path and
        the reason) if they cannot be: a file where the home should be, a parent that cannot be created, a home that
        belongs to another user (until 2026-12-04 a daemon run as root took one that another user had made in /tmp,
        whose owner could then read its search index and log, and replace its files)."""
        for d in (self.home, self.sessions_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unusable_home(self.home, d, exc) from None
            if d == self.home:  # before anything is made in it
                owner, uid = os.stat(d).st_uid, os.getuid()
                if owner != uid:  # e.g. made first in /tmp by another user: it could read and replace what is in it
                    raise UnusableHome(f"cannot use {self.home} as labd's home: it belongs to uid {owner}, not to you "
                                       f"(uid {uid}); another user may have created it. Remove it, or choose another "
                                       f"home")

    def ensure(self) -> None:
        """Create the home and the runtime directory (0700) if missing; refuse one that is not ours.

        Raises :class:`UnsafeRuntimeDir` (see :meth:`check_runtime_dir`), :class:`UnusableHome` for a home that
        cannot be created (see :meth:`ensure_home`).
        """
        self.ensure_home()
        chain = self._private_chain()
        base = chain[0].parent
        base.mkdir(parents=True, exist_ok=True)
        if base != Path(tempfile.gettempdir()):
            check_private(base, exact=False)
        for d in chain:  # checked one by one: nothing is created inside a directory that failed
            try:
                d.mkdir(mode=0o700)  # the umask can only narrow 0700
            except FileExistsError:
                pass
            check_private(d)


def layout_for(home: str | os.PathLike[str] | None = None) -> Layout:
    """The layout of a home (see :func:`resolve_home`)."""
    h = resolve_home(home)
    digest = hashlib.sha256(str(h).encode()).hexdigest()[:10]
    return Layout(home=h, runtime_dir=_runtime_base() / "labd" / digest)
