"""Removing a deleted session's directory on the Ray node it ran on (``labd rm``, ``labd prune``).

A Ray session works in ``<node dir>/<session>/work`` on its node (:func:`labd.runner.ray_actor.node_dir`), which the
daemon cannot reach. The directory is left when the session ends: after a SIGKILL or a lost connection it may hold
the only copy of files changed since the last shipped checkpoint. When the session is *deleted*, the daemon's Ray
driver runs :func:`remove_session_dir` as a Ray task pinned to each node the session was placed on
(:mod:`labd.daemon.ray_driver`, op ``clean``). Before 2026-12-07 nothing removed them (a Ray review: node disks
filled with the work of sessions long deleted).

It runs on the node, as the user the cluster runs as, and removes only what a session of labd made there: the
parent of ``workdir`` must be named after the session, ``workdir`` itself ``work``, and neither may be a symlink
(so a path in a forged placement, or one a session's code replaced with a link, removes nothing else).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from labd.runner.trees import remove_tree

__all__ = ["remove_session_dir"]

_SESSION_ID = re.compile(r"[0-9a-f]{12}")


def remove_session_dir(workdir: str, sid: str) -> str:
    """Remove session ``sid``'s directory, the parent of its work directory ``workdir`` on this node; returns what
    happened (``removed``, ``absent``) or raises ``ValueError`` for a path that is not such a directory."""
    work = Path(workdir)
    session_dir = work.parent
    if not _SESSION_ID.fullmatch(sid) or not work.is_absolute() or work.name != "work" or session_dir.name != sid \
            or ".." in work.parts:
        raise ValueError(f"not a labd session's work directory: {workdir!r} (session {sid})")
    try:
        st = os.lstat(session_dir)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISDIR(st.st_mode):  # a symlink (or a file) where the session's directory was: not followed
        raise ValueError(f"{session_dir} is not a directory")
    if st.st_uid != os.getuid():
        raise ValueError(f"{session_dir} belongs to uid {st.st_uid}, not this user")
    left = remove_tree(session_dir)  # never follows a symlink; read-only parts made writable first
    if left:
        raise OSError(f"{len(left)} entries of {session_dir} not removed: {'; '.join(left[:3])}")
    return "removed"
