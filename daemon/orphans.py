"""Runners a previous daemon started but never recorded, found by their process title (runner/title.py) when
a daemon starts:

- the daemon died after ``session.created`` was committed but before ``session.launched`` was: the session
  is stored with no pid. Its runner is adopted (not marked ``lost`` while it runs, and a ``queued`` one is
  not started a second time): :meth:`labd.daemon.supervisor.Supervisor.adopt`.
- the daemon died after handing the spec to the template but before ``session.created`` was committed (the
  two overlap: the start does not wait for the commit). No client was told the session exists (the reply
  waits for the commit) and the store has no trace of it: such a runner is killed (:func:`stop_stray`), else
  it would run its workflow to the end unrecorded and unsupervised. Only runners of *this* home: their
  working directory or an open file is in the session's directory here (another home's daemon may run
  runners for the same user).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from labd.runner.title import session_of_title

__all__ = ["find_runners", "belongs_here", "stop_stray"]


def _tagged(pid: int) -> str | None:
    try:
        return session_of_title(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return None


def find_runners() -> dict[str, tuple[int, float]]:
    """``{session id: (pid, create time)}`` of this user's live runner processes. A workflow's forked children
    carry their runner's title too: the runner is the one whose parent does not."""
    uid = os.getuid()
    tagged: dict[int, tuple[str, int, float]] = {}  # pid -> (session id, parent pid, create time)
    for p in psutil.process_iter(["uids", "status", "ppid", "create_time"]):
        info = p.info
        if info["uids"] is None or info["uids"].real != uid or info["status"] == psutil.STATUS_ZOMBIE:
            continue  # another user's, gone, or unreadable (psutil leaves None)
        sid = _tagged(p.pid)
        if sid is not None:
            tagged[p.pid] = (sid, info["ppid"], info["create_time"])
    return {sid: (pid, ctime) for pid, (sid, ppid, ctime) in tagged.items()
            if tagged.get(ppid, ("",))[0] != sid}  # not a child of the runner


def belongs_here(pid: int, session_dir: Path) -> bool:
    """Is this runner one of this home's: its working directory or an open file inside ``session_dir``?"""
    root = str(session_dir) + os.sep
    try:
        proc = psutil.Process(pid)
        if (proc.cwd() + os.sep).startswith(root):
            return True
        return any(f.path.startswith(root) for f in proc.open_files())
    except psutil.Error:
        return False


def stop_stray(pid: int, create_time: float) -> bool:
    """SIGKILL a stray runner's process group (it leads one), if it is still that process."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) >= 0.05:
            return False
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            proc.kill()
        return True
    except (psutil.Error, OSError):
        return False
