"""Every labd home of this user, so that each daemon's sessions are kept out of all of them.

A session's runner and the code it executes are kept out of their own daemon's home (its key, its database, other
sessions: docs/security.md). A user may have several homes (the default one, a project's, a test's); an attack
review read another home's ``daemon.key`` from a session's executed code and, through that daemon's control socket,
started a session there: unconfined, with the network. So each daemon records its home in a per-user registry
(``<XDG state dir>/labd/homes``, one absolute path per line), and every session's confinement hides every home the
registry names (:func:`others`), read at each session's start, so a home served after this daemon started is hidden
from its next sessions too.

The registry holds paths only (no secret). Entries whose directory is gone are dropped when it is rewritten; it
keeps the :data:`MAX_HOMES` most recently registered. A home that holds this daemon's own home or the Python
installation is not hidden (its sessions could not run): such a layout is refused nowhere, but gets no protection.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import platformdirs

__all__ = ["registry_path", "register", "others", "MAX_HOMES"]

#: homes kept in the registry (the most recently registered); each is one more path a session's confinement hides
MAX_HOMES = 64


def registry_path() -> Path:
    """The per-user registry of labd homes."""
    return Path(platformdirs.user_state_dir("labd", appauthor=False)) / "homes"


def _read(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.startswith("/")]


def register(home: Path) -> None:
    """Add ``home`` to the registry (moved to its end if there; gone homes dropped; at most :data:`MAX_HOMES`).
    Best effort: a registry that cannot be written leaves the other homes' sessions unprotected from this one,
    which the caller logs."""
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two daemons starting at once both keep their line
        own = str(home)
        homes = [h for h in _read(path) if h != own and os.path.isdir(h)] + [own]
        data = ("\n".join(homes[-MAX_HOMES:]) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


#: (the registry's path, its stat when read, the home asked for) -> the answer: a session's start asks three times
_last: tuple[tuple[Path, tuple[int, int, int], Path], list[str]] | None = None


def others(home: Path) -> list[str]:
    """The registered homes a session of ``home``'s daemon must not reach: every other existing home, except one
    that holds ``home`` or the Python installation (hiding it would hide what the session itself needs). Read again
    only when the registry changed (a home whose directory went since stays hidden until then: harmless)."""
    global _last
    path = registry_path()
    try:
        st = path.stat()
    except OSError:
        return []
    key = (path, (st.st_ino, st.st_mtime_ns, st.st_size), home)
    if _last is not None and _last[0] == key:
        return list(_last[1])
    own = home.resolve()
    needed = [own, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    out: list[str] = []
    for h in _read(path):
        p = Path(h)
        if p == own or not p.is_dir() or any(n == p or p in n.parents for n in needed):
            continue
        out.append(h)
    _last = (key, out)
    return list(out)
