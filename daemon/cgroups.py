"""Kernel limits: a cgroup per local session, where this machine lets the daemon make one.

The limits monitor (:mod:`labd.daemon.monitor`) enforces ``--memory`` and ``--procs`` from /proc, which cannot see
what a session holds in the kernel (pipe and socket buffers, System V shared memory, closed /dev/shm files), does not
count threads, and can lose a process that left the runner's tree with a clean environment. A cgroup closes those
gaps: its memory counter is the kernel's own (every page and buffer charged to the session), ``pids.max`` bounds
threads and processes together, and membership is kept by the kernel whatever a process does to its parentage.

Per session ``<sid>`` the daemon makes a group before the runner starts (the launcher puts its ``cgroup.procs`` files
in the spec; the runner writes its own pid there before it runs anything of the workflow, so all it starts is inside)
with ``memory`` = the session's memory limit (none: unbounded, still counted) and ``pids`` =
``[daemon] session_tasks``. The monitor reads the group's OOM-kill count on each pass of a session with a memory
limit: a kernel kill ends the session as a memory breach (``limit.exceeded`` with ``"enforced_by": "cgroup"``).
When a session has ended and its tree is buried, whatever is still in its group is killed and the group removed.

Where the groups live, and when there are none: :mod:`labd.daemon.cgroup_layout`.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

from labd.daemon.cgroup_layout import DAEMON_LEAF, Hierarchy, base_name, cgroup_mounts, detect
from labd.daemon.cgroup_layout import counter as _counter
from labd.daemon.cgroup_layout import read_text as _read_text
from labd.daemon.cgroup_layout import subdirs as _subdirs
from labd.daemon.cgroup_layout import write_file as _write

__all__ = ["SessionCgroups", "Hierarchy", "detect", "session_cgroups", "base_name", "cgroup_mounts",
           "DAEMON_LEAF"]

MOUNTS_TTL_S = 10.0  # how long the list of cgroup mounts (read-only to runners) is reused
KILL_ROUNDS = 50  # SIGKILL rounds over a group's processes (a forking group: pids.max bounds each round)
#: a group of this daemon's directory that no session of this daemon owns (a previous daemon's, whose session ended
#: or was lost while no daemon ran) is killed and removed once it has been a stray this long: longer than a runner
#: found at start takes to prove itself and be adopted (daemon/orphans.py). LABD_CGROUP_STRAY_S: a test knob
STRAY_GRACE_S = float(os.environ.get("LABD_CGROUP_STRAY_S") or 60.0)


def session_cgroups(home: Path, mode: str, tasks: int | None, log: Any) -> SessionCgroups:
    """The daemon's :class:`SessionCgroups` (none made when this machine does not allow it), logged once."""
    hierarchies, described = detect(home, mode)
    if hierarchies:
        log.info("a cgroup per session", kernel_limits=described, base=[str(h.base) for h in hierarchies])
    elif mode != "off":
        log.info("no cgroup per session: limits are enforced from /proc only", kernel_limits=described)
    groups = SessionCgroups(hierarchies, tasks, log, described)
    groups.drop_empty()
    return groups


class SessionCgroups:
    """The daemon's sessions' groups: made at launch, read by the monitor, killed and removed after the session."""

    def __init__(self, hierarchies: list[Hierarchy], tasks: int | None, log: Any, described: str = "") -> None:
        self.hierarchies = hierarchies
        self.described = described  # for labd status: "cgroup v1 (memory, pids)", or why there are none
        self.tasks = tasks or None
        self.log = log
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # session -> its current group's name (made or adopted, until released)
        #: groups of runs that are over, to kill and remove (retried each sweep while their last processes die)
        self._dying: set[str] = set()
        #: a group made ahead for the next runner: the template's spare joins it while it waits, off the start's path
        self._next: str | None = None
        self._ahead: str | None = None  # named by the last create(), made by make_ahead()
        self._mounts: list[str] = []
        self._mounts_at = -MOUNTS_TTL_S
        self._strays: dict[str, float] = {}  # group name -> when first seen owned by no session of ours

    @property
    def mounts(self) -> list[str]:
        """Every mounted cgroup hierarchy, those the groups are in and all others (a runner's Landlock policy makes
        them read-only). A session that could write in the memory or pids hierarchy could move itself out of its
        group; one that could write in any other v1 hierarchy could set its ``release_agent``, a program the kernel
        runs as root outside every confinement when a group empties (which can move any process, the daemon
        included, into the session's group, for the session's end to kill), or move the daemon into a frozen
        freezer group or a starved cpu group. Read again every :data:`MOUNTS_TTL_S` (a hierarchy mounted later is
        covered too; not at each launch: reading the mount table is ~0.1 ms on the start's path)."""
        now = time.monotonic()
        if now >= self._mounts_at + MOUNTS_TTL_S:
            self._mounts = sorted({str(h.mount) for h in self.hierarchies} | set(cgroup_mounts()))
            self._mounts_at = now
        return self._mounts

    def _dirs(self, sid: str) -> list[tuple[Hierarchy, Path]]:
        name = self._names.get(sid)
        return [(h, h.base / name) for h in self.hierarchies] if name else []

    def _procs(self, name: str) -> list[str]:
        return [str(h.base / name / "cgroup.procs") for h in self.hierarchies]

    def _make(self, name: str | None = None) -> str | None:
        """A new group (in every hierarchy; ``name`` or a new one) with the task bound and no memory bound yet; its
        name (None: failed, logged)."""
        name = name or _new_name()
        try:
            for h in self.hierarchies:
                (h.base / name).mkdir()
                if "pids" in h.controllers:
                    _write(h.base / name / "pids.max", str(self.tasks) if self.tasks else "max")
        except OSError as exc:
            self.log.warning("cannot make a session's cgroup: its limits are enforced from /proc only",
                             error=str(exc))
            self._rmdirs(name)
            return None
        return name

    def create(self, sid: str, memory: int | None) -> tuple[list[str] | None, list[str] | None]:
        """``sid``'s group, with its memory limit: the ``cgroup.procs`` files its runner joins (None: no group, the
        reason logged; the session runs under the /proc monitor only), and those of the group made ahead for the
        runner after it (which the template's next spare joins while it waits: moving a process between groups
        can take 10 ms, which a start should not wait for)."""
        if not self.hierarchies:
            return None, None
        with self._lock:
            name, self._next = self._next, None
            pending, self._ahead = self._ahead, None
        if name is None:  # launches in a burst: the one named for this runner is not made yet (make_ahead)
            name = self._make(pending)
        if name is not None:
            try:
                for h in self.hierarchies:
                    if "memory" in h.controllers and memory:  # a new group has no memory bound (~0.17 ms a write)
                        self._set_memory(h, h.base / name, memory)
            except OSError as exc:  # e.g. below what a spare waiting in it already holds
                self.log.warning("cannot set the session's cgroup memory limit: its memory limit is enforced from "
                                 "/proc only", session_id=sid, error=str(exc))
                limited = False
            else:
                limited = True
            with self._lock:  # the session's either way: a spare waiting in it runs the session there; released
                self._names[sid] = name  # with it at the end (a resumed session's last group: by its burial)
            if not limited:
                name = None  # a runner forked for it stays out of it
        ahead = _new_name()  # named now, for the spec; made by make_ahead, off the start's path
        with self._lock:
            self._ahead = ahead
        return (self._procs(name) if name else None), self._procs(ahead)

    def make_ahead(self) -> None:
        """Make the group :meth:`create` named for the next runner. Called by the monitor's thread, which the launch
        wakes (~0.4 ms of mkdirs the daemon's main thread need not wait for); the template's next spare, which joins
        it, is forked well after (SPARE_DELAY_S). A no-op when nothing is pending."""
        with self._lock:
            ahead, self._ahead = self._ahead, None
            if ahead is None or self._next is not None:
                return
        made = self._make(ahead)
        with self._lock:
            if self._next is None and made is not None:
                self._next, made = made, None
        if made is not None:  # a launch took another meanwhile
            self._rmdirs(made)

    def prime(self) -> list[str] | None:
        """The ``cgroup.procs`` files of the group the next runner gets, made now if none is (at the daemon's start,
        before any launch named one): the template's first spare joins it while it waits. None: no groups."""
        if not self.hierarchies:
            return None
        with self._lock:
            if self._next is None and self._ahead is None:
                self._ahead = _new_name()
        self.make_ahead()
        with self._lock:
            name = self._next or self._ahead
        return self._procs(name) if name else None

    @staticmethod
    def _set_memory(h: Hierarchy, d: Path, memory: int) -> None:
        if h.version == 2:
            _write(d / "memory.max", str(memory))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                try:  # no swap controller, an older kernel: the limit holds without them
                    _write(d / name, value)
                except OSError:
                    pass
            return
        _write(d / "memory.limit_in_bytes", str(memory))
        try:  # mem+swap (only with swap accounting): at least the memory limit, so swapping does not lift it
            _write(d / "memory.memsw.limit_in_bytes", str(memory))
        except OSError:
            pass

    def adopt(self, sid: str, pid: int) -> None:
        """A runner adopted after a restart: its group (if the last daemon made one) is this daemon's now. A session
        with a group already keeps it: the one :meth:`create` made for a runner just launched, which that runner
        joins only once it has read its spec (a spare may still be in another session's group at its watch)."""
        if not self.hierarchies or self.has(sid):
            return
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return
        mount_of = {h.base: h for h in self.hierarchies}
        for line in lines:
            path = Path(line.split(":", 2)[-1])
            for base, h in mount_of.items():
                rel = base.relative_to(h.mount)
                if path.parent == Path("/") / rel:
                    with self._lock:
                        self._names[sid] = path.name
                    return

    def has(self, sid: str) -> bool:
        """Does ``sid`` have a group of this daemon's, its run not over?"""
        with self._lock:
            return sid in self._names

    def group_of(self, sid: str) -> str | None:
        """The name of ``sid``'s current group (None: none), for :meth:`release` once that run is buried."""
        with self._lock:
            return self._names.get(sid)

    def oom_kills(self, sid: str) -> int:
        """How many of the session's processes the kernel killed at its memory limit (0 if none, or unknown)."""
        for h, d in self._dirs(sid):
            if "memory" in h.controllers:
                return _counter(d / ("memory.events" if h.version == 2 else "memory.oom_control"), "oom_kill")
        return 0

    def breach(self, sid: str, limit: int) -> dict[str, Any] | None:
        """The ``limit.exceeded`` payload if the kernel has killed a process of ``sid`` at its memory limit (the
        limit held by the kernel, reported as labd's own memory breach would be); else None."""
        if sid not in self._names:
            return None
        kills = self.oom_kills(sid)
        if not kills:
            return None
        return {"limit": "memory", "measured": max(self.peak_memory(sid), limit), "max": limit, "unit": "bytes",
                "action": "kill", "enforced_by": "cgroup", "oom_kills": kills}

    def task_refusals(self, sid: str) -> int:
        """How many times the kernel refused the session a new thread or process at its task bound (pids.max)."""
        for h, d in self._dirs(sid):
            if "pids" in h.controllers:
                return _counter(d / "pids.events", "max")
        return 0

    def peak_memory(self, sid: str) -> int:
        """The kernel's high-water mark of the group's memory (bytes; 0 if unknown)."""
        for h, d in self._dirs(sid):
            if "memory" in h.controllers:
                try:
                    return int((d / ("memory.peak" if h.version == 2 else "memory.max_usage_in_bytes")).read_text())
                except (OSError, ValueError):
                    return 0
        return 0

    def members(self, sid: str) -> set[int]:
        """Every process in the session's group now."""
        name = self._names.get(sid)
        return self._pids(name) if name else set()

    def _pids(self, name: str) -> set[int]:
        return {int(x) for h in self.hierarchies for x in _read_text(h.base / name / "cgroup.procs").split()
                if x.isdigit()}

    def _kill_group(self, name: str, pause: float = 0.0) -> bool:
        """Kill every process in group ``name`` (``cgroup.kill`` where the kernel has it, else SIGKILL rounds, ``pause``
        seconds apart) and remove it; False while it is still busy (a killed process not yet reaped)."""
        for h in self.hierarchies:
            if (h.base / name / "cgroup.kill").exists():  # v2, Linux 5.14+: the kernel kills the whole group at once
                try:
                    _write(h.base / name / "cgroup.kill", "1")
                except OSError:
                    pass
        for _ in range(KILL_ROUNDS):
            left = self._pids(name)
            if not left:
                break
            for pid in left:
                _kill_member(pid, name)
            if pause:
                time.sleep(pause)
        return self._rmdirs(name)

    def release(self, sid: str, group: str | None = None) -> None:
        """A run of ``sid`` is over and its tree buried: kill what is left in its group and remove it (now, or on a
        later :meth:`sweep` while processes are still dying). ``group``: that run's group (:meth:`group_of` when it
        ended); a session resumed meanwhile has a new one, which is left alone. None: the session's current group."""
        with self._lock:
            current = self._names.get(sid)
            group = group or current
            if group is None:
                return
            if group == current:
                del self._names[sid]
            self._dying.add(group)
        self._retire(group)

    def sweep(self) -> None:
        """Retry the removal of released groups still there (their last processes were dying), and kill and remove
        strays: groups no session of this daemon owns (a previous daemon's session ended or was lost while no daemon
        ran: what it left in its group, an orphan with a clean environment say, would otherwise live on unseen)."""
        with self._lock:
            pending = list(self._dying)
            known = {*self._names.values(), *pending, *([self._next] if self._next else [])}
        for name in pending:
            self._retire(name)
        now, seen = time.monotonic(), set()
        for child in _subdirs(self.hierarchies[0].base) if self.hierarchies else []:
            if child.name in known:
                continue
            seen.add(child.name)
            if now - self._strays.setdefault(child.name, now) >= STRAY_GRACE_S:
                left = self._pids(child.name)
                if left:
                    self.log.warning("killing what a session left in its cgroup while no daemon ran",
                                     group=child.name, pids=sorted(left)[:20])
                self._kill_group(child.name)  # busy while they die: again next sweep
        self._strays = {n: t for n, t in self._strays.items() if n in seen}

    def _retire(self, name: str) -> None:
        """Kill and remove the group of a run that is over; once gone, it is forgotten."""
        if self._kill_group(name):
            with self._lock:
                self._dying.discard(name)

    def _rmdirs(self, name: str) -> bool:
        """Remove group ``name`` in every hierarchy; False while one is still busy."""
        gone = True
        for d in (h.base / name for h in self.hierarchies):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    self.log.warning("cannot remove a session's cgroup", path=str(d), error=str(exc))
                gone = False
        return gone

    def drop_empty(self) -> None:
        """Remove every group of this daemon's with no process left (the kernel refuses the others): at start, what a
        daemon that died left behind; at shutdown, all but the groups of sessions that keep running (for the next
        daemon to adopt)."""
        for h in self.hierarchies:
            for child in _subdirs(h.base):
                try:
                    child.rmdir()
                except OSError:
                    pass

    def close(self) -> None:
        """At daemon shutdown (the template gone): the group made ahead (only a spare of the template's is in it),
        :meth:`drop_empty`, and the daemon's directories if nothing is left in them."""
        ahead, self._next = self._next, None
        if ahead is not None:  # a killed spare leaves its group once reaped (by init, the template being gone)
            self._kill_group(ahead, pause=0.01)
        self.drop_empty()
        for h in self.hierarchies:
            try:
                h.base.rmdir()
            except OSError:
                pass


def _new_name() -> str:
    """A session group's name: random (a group is a run's, never a session's for good: a resume gets another)."""
    return "r-" + secrets.token_hex(6)


def _kill_member(pid: int, group: str) -> None:
    """SIGKILL ``pid`` if it is still in ``group``: through a pidfd opened before the check, so a pid that was
    reused between reading the group and the signal is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        if any(line.rsplit("/", 1)[-1] == group for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()):
            signal.pidfd_send_signal(fd, signal.SIGCONT)  # a throttled (stopped) process must get its SIGKILL too
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)
