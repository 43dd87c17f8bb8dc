"""What a runner's process tree gets before anything of a session is forked: the sessions' file descriptor limit
and the clone filter. Done once by the warm template (runner/template.py), whose every child inherits it, and first
thing by a Ray node's runner (runner/remote.py), which has no template."""

from __future__ import annotations

import os

__all__ = ["keep_in_tree", "limit_files", "limit_files_from_env"]


def limit_files_from_env() -> None:
    """The sessions' file descriptor limit (``LABD_SESSION_NOFILE``), set before anything is forked: the spare,
    every runner, workflow check and all they start inherit it."""
    value = os.environ.pop("LABD_SESSION_NOFILE", "")
    if value.isdigit():
        limit_files(int(value))


def limit_files(value: int) -> None:
    """Set this process's ``RLIMIT_NOFILE`` to ``value`` (at most its hard limit), soft = hard, so that nothing it
    starts can raise it (``[daemon] session_nofile``; 0: unchanged). Also the first thing a Ray node's runner does
    (runner/remote.py)."""
    if value > 0:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def keep_in_tree() -> str:
    """Install the clone filter (:func:`labd.runner.sandbox.seccomp.deny_clone_parent`: no ``clone(CLONE_PARENT)``,
    no ``clone3``) on this process, before it forks anything, so that no session process can make a child outside
    its runner's tree. Returns ``on`` or why not (``unavailable: ...``), for the daemon's log. Also what a Ray
    node's runner does first (runner/remote.py)."""
    from labd.runner.sandbox import seccomp

    if os.environ.pop("LABD_CLONE_FILTER", "") == "off":  # a test knob: the monitor's backstop alone
        return "off: LABD_CLONE_FILTER=off"
    try:
        seccomp.deny_clone_parent()
    except OSError as exc:
        return f"unavailable: {exc}"
    return "on"
