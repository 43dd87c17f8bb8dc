"""Where a daemon makes its sessions' cgroups (:mod:`labd.daemon.cgroups`): finding the hierarchies and the
daemon's directory in them. The directory is ``labd-<hash of the home>``:

- **cgroup v1** (``memory`` and ``pids`` hierarchies mounted separately): under the daemon's own group in each
  hierarchy. Needs write access there (root, or a delegated subtree).
- **cgroup v2** (unified): the no-internal-processes rule forbids enabling controllers for children of a group that
  has processes, so the daemon must not sit in the group that holds the sessions' groups: either it runs in a leaf
  named ``labd-daemon`` of a delegated group (systemd: ``Delegate=yes`` with ``DelegateSubgroup=labd-daemon``) and
  sessions go beside it, or, as root, under the hierarchy's root.

Anything else (no such hierarchy, no permission, ``[daemon] cgroups = "off"``): no groups; the /proc monitor alone
enforces the limits, and ``labd status`` says why (``kernel_limits``). Remote (Ray) sessions get none: their node
monitor enforces their limits.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hierarchy", "detect", "base_name", "cgroup_mounts", "write_file", "read_text", "subdirs", "counter",
           "DAEMON_LEAF"]

#: the v2 leaf a delegated daemon runs in (systemd ``DelegateSubgroup=``): its sessions' groups go beside it
DAEMON_LEAF = "labd-daemon"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy the sessions' groups are made in: its version, the controllers it carries here and
    the daemon's directory in it (``labd-<hash>``), the parent of every session's group."""

    version: int
    controllers: tuple[str, ...]
    base: Path
    mount: Path  # where the hierarchy is mounted: the runner may read it, not write it (Landlock)


def base_name(home: Path) -> str:
    """The name of a daemon's directory in each hierarchy: one per labd home, so daemons of several homes on one
    machine (and a restarted daemon finding its sessions' groups) never mix."""
    return "labd-" + hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:12]


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path (v2's line under the key ``""``)."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(",") if parts[1] else [""]:
                out[c] = parts[2]
    return out


def _mounts(mounts: str) -> list[tuple[str, str, set[str]]]:
    """cgroup mounts from ``/proc/self/mounts``: (type, mount point, options)."""
    out = []
    for line in mounts.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] in ("cgroup", "cgroup2"):
            out.append((f[2], f[1].replace("\\040", " "), set(f[3].split(","))))
    return out


def cgroup_mounts(mounts: str | None = None) -> list[str]:
    """The mount points of every cgroup and cgroup2 file system (``mounts`` stands in for ``/proc/self/mounts``)."""
    try:
        text = mounts if mounts is not None else Path("/proc/self/mounts").read_text()
    except OSError:
        return []
    return [point for _, point, _ in _mounts(text)]


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to an existing file (a cgroup interface file: never created)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enable(group: Path, controllers: tuple[str, ...]) -> None:
    """Enable ``controllers`` for the children of v2 ``group`` (those already enabled are left as they are)."""
    have = set((group / "cgroup.subtree_control").read_text().split())
    missing = [c for c in controllers if c not in have]
    if missing:
        write_file(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def detect(home: Path, mode: str = "auto", *, proc_cgroup: str | None = None, mounts: str | None = None,
           euid: int | None = None) -> tuple[list[Hierarchy], str]:
    """Where this daemon can make its sessions' groups, and a sentence for ``labd status``: ``([], why not)`` when
    it cannot. ``proc_cgroup``, ``mounts`` and ``euid`` stand in for this process's own (tests of the v2 layout on a
    machine without it)."""
    if mode == "off":
        return [], "off: [daemon] cgroups = \"off\""
    own = _own_paths(proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text())
    table = _mounts(mounts if mounts is not None else Path("/proc/self/mounts").read_text())
    tag = base_name(home)
    root = (os.geteuid() if euid is None else euid) == 0
    v1 = {c: Path(point) for kind, point, opts in table if kind == "cgroup" for c in ("memory", "pids") if c in opts}
    try:
        if set(v1) == {"memory", "pids"} and "memory" in own and "pids" in own:
            found = []
            for c in ("memory", "pids"):
                base = v1[c] / own[c].lstrip("/") / tag
                base.mkdir(exist_ok=True)
                found.append(Hierarchy(1, (c,), base, v1[c]))
            return found, "cgroup v1 (memory, pids)"
        v2 = next((Path(point) for kind, point, _ in table if kind == "cgroup2"), None)
        if v2 is None or "" not in own:
            return [], "unavailable: no cgroup v2, and cgroup v1 lacks the memory or pids hierarchy"
        mine = v2 / own[""].lstrip("/")
        if mine.name == DAEMON_LEAF:
            parent = mine.parent
        elif root:
            parent = v2
        else:
            return [], (f"unavailable: cgroup v2 needs the daemon in a delegated leaf named {DAEMON_LEAF} (systemd: "
                        f"Delegate=yes, DelegateSubgroup={DAEMON_LEAF}) or root")
        have = set((parent / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= have:
            return [], f"unavailable: cgroup v2 {parent} offers {' '.join(sorted(have)) or 'no controllers'}, not " \
                       "memory and pids"
        _enable(parent, ("memory", "pids"))
        base = parent / tag
        base.mkdir(exist_ok=True)
        _enable(base, ("memory", "pids"))
        return [Hierarchy(2, ("memory", "pids"), base, v2)], "cgroup v2 (memory, pids)"
    except OSError as exc:
        return [], f"unavailable: {exc.strerror or exc} ({getattr(exc, 'filename', '') or 'cgroup'})"


def read_text(path: Path) -> str:
    """A cgroup file's text (empty if it cannot be read: the group is gone)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def subdirs(d: Path) -> list[Path]:
    """The groups directly under ``d`` (none if it cannot be listed)."""
    try:
        return [p for p in d.iterdir() if p.is_dir()]
    except OSError:
        return []


def counter(path: Path, name: str) -> int:
    """A ``name value`` line of a cgroup's flat-keyed file (0 if missing)."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
