"""Landlock (Linux >= 5.13) through raw syscalls: restrict what the calling thread and its future children
may read, write, connect to and signal.

Standard library only (ctypes): the exec helper (:mod:`labd.runner.sandbox.confine`) loads this file with
``python -I -S``, without labd on the path.

Landlock is an allow-list: a rule on a directory grants access to everything beneath it. To *deny* a
subtree (labd's home, ``~/.ssh``) under an allowed tree, :func:`allowed_roots` splits every ancestor of a
denied path into its children and grants each child that holds nothing denied. An ancestor itself gets no
rule, so it cannot be listed, and a file created in it later is not reachable either (safe by default).

A Landlock domain applies to the thread that calls :func:`restrict` and to what it starts afterwards;
call it before a process starts threads (or in the child right before ``exec``).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Iterable

__all__ = ["abi_version", "Ruleset", "allowed_roots", "walk", "LandlockError", "READ", "FILE_RIGHTS"]

_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446  # the same number on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

#: rights that make sense on a file (a rule on a non-directory may carry only these)
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR | IOCTL_DEV


class LandlockError(OSError):
    """Landlock is missing, disabled, or refused a rule."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(*args: object) -> int:
    ret = _libc.syscall(*args)
    if ret < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, os.strerror(err))
    return int(ret)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is not built in or not enabled at boot."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return _syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except LandlockError:
        return 0


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS)``: exec can never grant privileges again (required by Landlock and
    seccomp for an unprivileged process)."""
    if _libc.prctl(38, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")


class Ruleset:
    """A Landlock ruleset being built: every right this ABI knows is denied unless a rule grants it."""

    def __init__(self, *, deny_tcp: bool = False, scope_signals: bool = False,
                 scope_abstract_unix: bool = False) -> None:
        self.abi = abi_version()
        if self.abi < 1:
            raise LandlockError(38, "Landlock is not available in this kernel")
        self.fs = _fs_rights(self.abi)
        attr = _RulesetAttr(self.fs, 0, 0)
        size = 8
        #: what this ruleset really enforces beyond the filesystem (older ABIs cannot)
        self.enforced: set[str] = {"filesystem"}
        if deny_tcp and self.abi >= 4:
            attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP  # no rule follows: all TCP denied
            size = 16
            self.enforced.add("tcp")
        if (scope_signals or scope_abstract_unix) and self.abi >= 6:
            attr.scoped = (SCOPE_SIGNAL if scope_signals else 0) | (SCOPE_ABSTRACT_UNIX if scope_abstract_unix else 0)
            size = 24
            self.enforced.add("scope")
        self.fd = _syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))

    def allow(self, path: str, rights: int) -> bool:
        """Grant ``rights`` beneath ``path``; False if the path does not exist (nothing to grant)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):  # what was opened, not the path again
                rights &= FILE_RIGHTS
            rule = _PathBeneath(rights & self.fs, fd)
            if rule.allowed_access:
                _syscall(_SYS_ADD_RULE, self.fd, ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                         ctypes.c_uint32(0))
        finally:
            os.close(fd)
        return True

    def restrict(self) -> None:
        """Enforce the ruleset on the calling thread (and everything it starts from now on)."""
        no_new_privs()
        try:
            _syscall(_SYS_RESTRICT, self.fd, ctypes.c_uint32(0))
        finally:
            os.close(self.fd)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Walk:
    """One walk of the filesystem for a deny list: the roots covering everything else, the denied paths
    met on the way, and the directories listed (with their mtimes, to tell when the walk is stale, and the
    (name, inode) of each entry, to tell whether entries were only added since).

    A walk made by extending another (only new entries in listed directories) names it as ``base`` and
    lists its new roots in ``added``: a ruleset built from ``base`` becomes this walk's by adding those."""

    MAX_CHAIN = 8  # extensions of extensions: beyond this, a walk names no base (holders rebuild)

    def __init__(self, roots: list[str], met: list[str], scanned: list[tuple[str, int]],
                 entries: dict[str, frozenset[tuple[str, int]]], base: Walk | None = None,
                 added: list[str] | None = None) -> None:
        self.roots, self.met, self.scanned, self.entries = roots, met, scanned, entries
        self.base, self.added = base, added or []
        self.depth: int = base.depth + 1 if base is not None else 0
        if self.depth > self.MAX_CHAIN:
            self.base, self.depth = None, 0

    def fresh(self) -> bool:
        """True while every listed directory has the mtime it had when listed (an entry added, removed or
        renamed in a directory changes its mtime), i.e. a new walk would find the same roots."""
        return all(_mtime(p) == m for p, m in self.scanned)

    def added_since(self, older: Walk) -> list[str] | None:
        """The roots this walk has beyond ``older``, if it extends it (through ``base``); else None."""
        added: list[str] = []
        w: Walk | None = self
        while w is not None:
            if w is older:
                return added
            added.extend(w.added)
            w = w.base
        return None

    def regranted(self, allow: Iterable[str]) -> list[str]:
        """The ``allow`` paths beneath a denied path met by this walk (granted again)."""
        regrant = [os.path.realpath(p) for p in allow]
        out: list[str] = []
        for path in self.met:
            out.extend(a for a in regrant if _under(a, path) and a not in out)
        return out


#: denied paths -> their last walk: a spare runner walks ahead of its session (runner/spare.py); a later
#: call reuses the walk while it is fresh, or extends it when entries were only added
_walks: dict[tuple[str, ...], Walk] = {}


def _mtime(path: str) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime_ns
    except OSError:
        return -1


class _Walker:
    """Collects roots, denied paths met and listed directories, as :func:`walk` visits paths."""

    def __init__(self, denied: tuple[str, ...]) -> None:
        for d in denied:  # the lookups below are exact only for normalised absolute paths: refuse anything else
            if not isinstance(d, str) or not d.startswith("/") or d.startswith("//") or os.path.normpath(d) != d:
                raise ValueError(f"a denied path must be absolute and normalised (os.path.realpath): {d!r}")
        self.denied = frozenset(denied)
        #: every directory above a denied path: the ones to list (their other entries are roots)
        self.above = frozenset(_ancestors(denied))
        self.roots: list[str] = []
        self.met: list[str] = []
        self.scanned: list[tuple[str, int]] = []
        self.entries: dict[str, frozenset[tuple[str, int]]] = {}

    def visit(self, path: str) -> None:
        # Two set lookups per entry, not a comparison with every denied path (a session of a daemon whose user has
        # 60 homes hides ~70 paths: 600,000 comparisons, ~100 ms of every runner's start). Exact because a path
        # is only visited below a directory that is neither denied nor below a denied path: so it is below a
        # denied path only if it is one, and it holds one only if it is one or lies above one.
        if path in self.denied:
            self.met.append(path)
            return
        if path not in self.above:
            self.roots.append(path)
            return
        # the mtime before listing: a change while we list shows as a different mtime later
        self.scanned.append((path, _mtime(path)))
        try:
            listing = list(os.scandir(path))
        except OSError:
            return
        self.entries[path] = frozenset((e.name, e.inode()) for e in listing)
        for entry in listing:
            self.visit_entry(entry)

    def visit_entry(self, entry: os.DirEntry[str]) -> None:
        try:
            if entry.is_symlink():  # the path it points to has its own rule
                return
        except OSError:
            return
        self.visit(entry.path)


def _extend(cached: Walk, denied: tuple[str, ...]) -> Walk | None:
    """``cached`` brought up to date if its changed directories only gained entries; else None (walk again).

    An entry that went away or was renamed (or replaced: another inode) forces a whole new walk, so a grant
    never follows a directory to a new place."""
    w = _Walker(denied)
    w.roots, w.met, w.entries = list(cached.roots), list(cached.met), dict(cached.entries)
    first_new = len(w.roots)
    for path, mtime in cached.scanned:
        now = _mtime(path)
        if now == mtime:
            w.scanned.append((path, mtime))
            continue
        old = cached.entries.get(path)
        try:
            listing = list(os.scandir(path))
        except OSError:
            return None
        new = frozenset((e.name, e.inode()) for e in listing)
        if old is None or not old <= new:
            return None
        w.scanned.append((path, now))
        w.entries[path] = new
        for entry in listing:
            if (entry.name, entry.inode()) not in old:
                w.visit_entry(entry)
    return Walk(w.roots, w.met, w.scanned, w.entries, base=cached, added=w.roots[first_new:])


def walk(deny: Iterable[str]) -> Walk:
    """The walk for ``deny`` (resolved through symlinks): the cached one while fresh, else the cached one
    extended (entries were only added), else a new one."""
    denied = tuple(sorted({os.path.realpath(p) for p in deny}))
    cached = _walks.get(denied)
    if cached is not None:
        if cached.fresh():
            return cached
        extended = _extend(cached, denied)
        if extended is not None:
            _walks[denied] = extended
            return extended
    w = _Walker(denied)
    w.visit("/")
    _walks[denied] = result = Walk(w.roots, w.met, w.scanned, w.entries)
    return result


def allowed_roots(deny: Iterable[str], allow: Iterable[str] = ()) -> list[str]:
    """The smallest set of existing paths that covers the whole filesystem except ``deny`` (resolved
    through symlinks), plus ``allow`` (paths beneath a denied one that are granted again, e.g. a session's
    own directory inside labd's home). Symlinks are skipped: the path they point to has its own rule."""
    w = walk(deny)
    return [*w.roots, *w.regranted(allow)]


def _ancestors(paths: Iterable[str]) -> set[str]:
    """Every directory above one of ``paths`` (absolute, normalised), ``/`` included."""
    out: set[str] = set()
    for d in paths:
        parent = os.path.dirname(d)
        while parent not in out:
            out.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    return out


def listable_ancestors(deny: Iterable[str]) -> list[str]:
    """The directories above each ``deny`` path (``/`` included). :func:`allowed_roots` grants their other
    entries but not the directories themselves, so nothing could *list* them: Python's import system lists a
    ``sys.path`` directory to find a module, and a workflow in ``~`` (above the default home) would not import.
    Callers grant ``READ_DIR`` alone on these — names become visible, contents of denied paths do not."""
    return sorted(_ancestors({os.path.realpath(p) for p in deny}))
