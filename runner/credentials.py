"""The runner's credentials: its own per-session key, and what keeps it (and it) away from labd's state.

A runner speaks only for its session: it signs with a key derived for that session
(:func:`labd.ipc.signing.derive_key`), never the daemon's key. The daemon leaves the key in
``<session dir>/runner.key``; :func:`take_key` reads it and deletes it before any workflow code runs.

:func:`confine_runner` then puts the runner under Landlock (when the kernel has it): labd's home and
runtime directory become unreadable and unwritable except the session's own directory, so the runner and
everything it starts cannot read ``daemon.key``, the database, the connection file or other sessions'
files, and (Landlock ABI >= 6) cannot signal processes outside the session. What remains possible for a
process of the same user is listed in docs/security.md.
"""

from __future__ import annotations

import os
from typing import Any

from labd.runner.sandbox import landlock

__all__ = ["take_key", "confine_runner"]


def take_key(spec: dict[str, Any]) -> bytes:
    """The runner's signing key: from the key file (deleted once read), or ``spec["key"]`` (hex) for
    callers that start a runner without the template launcher (tests, the cold-start benchmark)."""
    path = spec.get("key_file")
    if not path:
        return bytes.fromhex(spec["key"])
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        key = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return bytes.fromhex(key)


def confine_runner(confine: dict[str, Any] | None) -> str:
    """Apply the runner's Landlock policy (``spec["confine"]``: ``hide`` and ``allow`` paths) to the calling
    thread and what it starts; call it before the runner starts any thread. Returns what happened
    (``landlock``, ``off`` or ``unavailable: <why>``): the runner reports it in ``session.started``."""
    if not confine:
        return "off"
    if landlock.abi_version() < 1:
        return "unavailable: no Landlock in this kernel"
    try:
        rules = landlock.Ruleset(scope_signals=True)
        for root in landlock.allowed_roots(confine.get("hide", []), allow=confine.get("allow", [])):
            rules.allow(root, rules.fs)
        for parent in landlock.listable_ancestors(confine.get("hide", [])):
            rules.allow(parent, landlock.READ_DIR)
        rules.restrict()
    except OSError as exc:
        return f"unavailable: {exc}"
    return "landlock"
