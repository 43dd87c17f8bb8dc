"""bubblewrap (the ``bwrap`` program from the OS package): namespaces for executed code.

The command runs in new mount, PID, IPC and (network off) network namespaces, the approach of Codex's
Linux sandbox and Anthropic's sandbox-runtime:

- ``/`` read-only; a fresh ``/dev``, ``/proc`` (only the sandbox's own processes: the daemon's and other
  sessions' ``/proc/<pid>`` do not exist in it) and a private ``/tmp`` and ``/dev/shm`` (tmpfs);
- every hidden path (labd's home, its runtime directory, credential dotfiles) covered by an empty
  read-only tmpfs (a directory) or ``/dev/null`` (a file), the session's work directory bound back writable;
- ``--unshare-net``: only a loopback interface of its own, so nothing on the host is reachable;
- ``--cap-drop ALL`` (bwrap keeps root's capabilities otherwise), ``--new-session`` (no terminal
  injection), ``--die-with-parent``: killing bwrap ends everything in the PID namespace, including
  children that called ``setsid`` or double-forked.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable

__all__ = ["find", "wrap"]


def find() -> str | None:
    """The ``bwrap`` executable, or None."""
    return shutil.which("bwrap")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def wrap(bwrap: str, argv: list[str], workdir: str, hide: Iterable[str], network: bool) -> list[str]:
    """``argv`` confined by bwrap: writes only in ``workdir`` and a private ``/tmp``; ``hide`` unreadable."""
    workdir = os.path.realpath(workdir)
    out = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--cap-drop", "ALL"]
    if not network:
        out.append("--unshare-net")
    out += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    # The interpreter must stay reachable: a virtualenv under /tmp would vanish behind the private /tmp.
    for prefix in sorted({os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix)}):
        if _under(prefix, "/tmp") and os.path.isdir(prefix):
            out += ["--ro-bind", prefix, prefix]
    read_only: list[str] = []
    for path in sorted({os.path.realpath(p) for p in hide}):
        if _under(path, "/tmp") or _under(path, "/proc") or _under(path, "/dev") or not os.path.lexists(path):
            continue  # already private, or nothing there to hide
        if os.path.isdir(path):
            out += ["--tmpfs", path]
            read_only += ["--remount-ro", path]  # after the work directory is bound in: it stays writable
        else:
            out += ["--ro-bind", "/dev/null", path]
    out += ["--bind", workdir, workdir, *read_only, "--chdir", workdir, "--setenv", "TMPDIR", "/tmp", "--", *argv]
    return out
