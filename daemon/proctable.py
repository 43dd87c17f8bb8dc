"""One pass over /proc: every process's parent, group, state, CPU and memory, read once per tick for all sessions.

The monitor used to ask psutil for ``children(recursive=True)`` of every runner, which walks all of /proc
once *per session* (at 100 idle sessions that was 37 % of a core). :class:`ProcTable` reads each
``/proc/<pid>/stat`` once per pass and builds the parent -> children map; every session's tree is then a
walk of that map. One ``stat`` read gives all the monitor needs except proportional memory:

- CPU: ``utime + stime`` of the process plus ``cutime + cstime`` (the times of its children that have
  exited and were reaped), so short-lived children's CPU still counts towards their session.
- memory: ``rss`` as an upper bound; the proportional set size (PSS, from ``smaps_rollup``) is read only
  for processes whose RSS changed since their last PSS reading (:class:`PssCache`), because that read
  walks the process's page tables and is ~100 x dearer than ``stat``.
- the session marker: runners export ``LABD_SESSION_ID``; a process that left its runner's tree (double
  fork after the runner died, or ``prctl`` unavailable) is recognised by its inherited environment, read
  once per process (:class:`MarkerCache`).

A file that cannot be read because the daemon has no file descriptor left (``EMFILE``, ``ENFILE``) says nothing
about the process, so the pass's reads raise it (:func:`scarce`) rather than take the process for gone: a runner
missing from a table read at the fd limit was taken for vanished (its session ended, the runner left unwatched),
an escapee's marker was cached as "none", an unreadable PSS was cached as the RSS (a false memory kill).
The monitor logs the failed pass and retries it (daemon/monitor.py). Callers outside a pass keep "None: unreadable".
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

__all__ = ["Proc", "ProcTable", "PssCache", "MarkerCache", "read_proc", "scarce"]

#: errors that mean "the daemon has no file descriptor left", not "the process is gone or not ours" (not ENOMEM:
#: should one process's file keep failing with it, every pass would fail and no limit be enforced at all)
SCARCE = frozenset({errno.EMFILE, errno.ENFILE})


def scarce(exc: OSError) -> bool:
    """True for an error that says the daemon has no file descriptor left, not that the process is gone."""
    return exc.errno in SCARCE

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class Proc:
    """What one ``/proc/<pid>/stat`` read tells (times in seconds, rss in bytes)."""

    pid: int
    ppid: int
    pgid: int
    state: str
    start: int  # clock ticks after boot: (pid, start) names a process uniquely
    cpu: float  # own user+system time plus that of reaped children
    rss: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def read_proc(pid: int, strict: bool = False) -> Proc | None:
    """Parse ``/proc/<pid>/stat``; None if the process is gone (or, unless ``strict``, cannot be read at all);
    with ``strict``, a :func:`scarce` error is raised."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError as exc:
        if strict and scarce(exc):
            raise
        return None
    try:
        data = os.read(fd, 2048)
    except OSError as exc:
        if strict and scarce(exc):
            raise
        return None
    finally:
        os.close(fd)
    # the command name (field 2) may hold spaces and parentheses: fields start after the last ')'
    f = data[data.rfind(b")") + 2:].split()
    if len(f) < 22:
        return None
    return Proc(pid, int(f[1]), int(f[2]), f[0].decode(), int(f[19]),
                (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / _TICK, int(f[21]) * _PAGE)


class ProcTable:
    """The process table as of the last :meth:`scan`."""

    def __init__(self) -> None:
        self.procs: dict[int, Proc] = {}
        self.children: dict[int, list[int]] = {}

    def scan(self) -> dict[int, Proc]:
        """Read every process once and rebuild the parent -> children map. Raises OSError when /proc cannot be
        listed or a :func:`scarce` error stops a read (no file descriptor left): the last table is kept."""
        procs: dict[int, Proc] = {}
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            p = read_proc(int(name), strict=True)
            if p is None:
                continue
            procs[p.pid] = p
            children.setdefault(p.ppid, []).append(p.pid)
        self.procs, self.children = procs, children
        return procs

    def tree(self, roots: list[int]) -> list[Proc]:
        """``roots`` and all their descendants present in the table (each once)."""
        out: list[Proc] = []
        seen: set[int] = set()
        stack = [r for r in roots if r in self.procs]
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            out.append(self.procs[pid])
            stack.extend(self.children.get(pid, ()))
        return out


def read_pss(pid: int) -> int | None:
    """Proportional set size in bytes (``smaps_rollup``); None if unreadable (gone, or no such file); a
    :func:`scarce` error is raised (the caller would take the RSS for the PSS and keep it)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            data = f.read()
    except OSError as exc:
        if scarce(exc):
            raise
        return None
    i = data.find(b"\nPss:")
    if i < 0:
        return None
    return int(data[i + 5:data.index(b"kB", i)]) * 1024


SLACK = 256 * 1024


class PssCache:
    """PSS per process, re-read only when the process's RSS moved since the last reading.

    ``estimate`` = last PSS + RSS growth since then: an upper-bound-ish figure that costs nothing for
    idle processes; :meth:`exact` re-reads everything that changed (used before any kill decision).
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], tuple[int, int]] = {}  # key -> (pss, rss when read)
        self.available = os.path.exists("/proc/self/smaps_rollup")

    def estimate(self, p: Proc) -> int:
        hit = self._by_key.get(p.key)
        if hit is None:
            return self.refresh(p)
        pss, rss_then = hit
        return max(0, pss + p.rss - rss_then)

    def refresh(self, p: Proc) -> int:
        if p.zombie:
            return 0
        pss = read_pss(p.pid) if self.available else None
        if pss is None:
            pss = p.rss  # no smaps_rollup (old kernel, or the process just exited): the upper bound
        self._by_key[p.key] = (pss, p.rss)
        return pss

    def exact(self, p: Proc) -> int:
        """PSS re-read unless the RSS moved by at most ``SLACK`` since the last reading (idle processes'
        RSS wobbles by a page or two; re-reading them all would cost more than the rest of a pass)."""
        hit = self._by_key.get(p.key)
        if hit is not None and abs(p.rss - hit[1]) <= SLACK:
            return max(0, hit[0] + p.rss - hit[1])
        return self.refresh(p)

    def prune(self, alive: dict[int, Proc]) -> None:
        for key in [k for k in self._by_key if alive.get(k[0]) is None or alive[k[0]].start != k[1]]:
            del self._by_key[key]


MARKER = b"LABD_SESSION_ID="


class MarkerCache:
    """The session a process belongs to by its inherited ``LABD_SESSION_ID``, read once per process."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], str | None] = {}

    def session_of(self, p: Proc) -> str | None:
        key = p.key
        if key in self._by_key:
            return self._by_key[key]
        sid = None
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                # another user's process is never a session's, whatever it put in its environment (a daemon that
                # can read every environment, as root, counted it against the session it named, and killed both)
                env = f.read() if os.fstat(f.fileno()).st_uid == os.getuid() else b""
            i = env.find(MARKER)
            if i == 0 or (i > 0 and env[i - 1] == 0):
                end = env.find(b"\0", i)
                sid = env[i + len(MARKER):end if end >= 0 else None].decode(errors="replace")
        except OSError as exc:
            if scarce(exc):  # says nothing about the process: not cached, read again next pass
                raise
            # gone, or another user's process: not ours either way
        self._by_key[key] = sid
        return sid

    def prune(self, alive: dict[int, Proc]) -> None:
        for key in [k for k in self._by_key if alive.get(k[0]) is None or alive[k[0]].start != k[1]]:
            del self._by_key[key]
