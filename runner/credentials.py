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

__all__ = ["take_key", "confine_runner", "prepare_confinement", "refresh_confinement"]

#: a ruleset built ahead of the session by a spare runner: (hide list, its walk, the ruleset with every
#: session-independent rule); confine_runner adds the session's own directory and enforces it
_prepared: tuple[list[str], landlock.Walk, landlock.Ruleset] | None = None


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


def _base_rules(hide: list[str]) -> tuple[landlock.Walk, landlock.Ruleset]:
    """A ruleset granting everything but ``hide`` (and listing of its ancestors): all but the session's part."""
    w = landlock.walk(hide)
    rules = landlock.Ruleset(scope_signals=True)
    for root in w.roots:
        rules.allow(root, rules.fs)
    for parent in landlock.listable_ancestors(hide):
        rules.allow(parent, landlock.READ_DIR)
    return w, rules


def prepare_confinement(hide: list[str]) -> None:
    """Build the session-independent part of the runner's Landlock ruleset now (a spare runner, before its
    spec arrives); :func:`confine_runner` uses it if its ``hide`` list is the same and the filesystem walk
    behind it is still fresh. Nothing is enforced here."""
    global _prepared
    if landlock.abi_version() < 1:
        return
    try:
        w, rules = _base_rules(hide)
    except OSError:
        return
    _prepared = (list(hide), w, rules)


def refresh_confinement(hide: list[str]) -> None:
    """Bring what is prepared for ``hide`` up to date (a waiting spare calls this now and then, so a long
    wait does not end in a full walk on the request's path): nothing if fresh, rules for new entries if
    entries were only added, else prepare again."""
    global _prepared
    if _prepared is not None and _prepared[0] == hide and _prepared[1].fresh():
        return
    rules = _take_prepared(hide)
    if rules is None:
        prepare_confinement(hide)
    else:
        _prepared = (list(hide), landlock.walk(hide), rules)


def _take_prepared(hide: list[str] | None) -> landlock.Ruleset | None:
    """The prepared ruleset if it was built for ``hide`` and is still fresh, or its walk was only extended
    since (the new roots are granted now, as a new walk would); else None (and it is closed)."""
    global _prepared
    prepared, _prepared = _prepared, None
    if prepared is None:
        return None
    old_hide, w, rules = prepared
    added = landlock.walk(hide).added_since(w) if hide is not None and old_hide == hide else None
    if added is not None:
        try:
            for root in added:
                rules.allow(root, rules.fs)
            return rules
        except OSError:
            pass
    os.close(rules.fd)
    return None


def confine_runner(confine: dict[str, Any] | None) -> str:
    """Apply the runner's Landlock policy (``spec["confine"]``: ``hide``, ``allow``, and ``read``: hidden paths granted
    again read-only) to the calling thread and what it starts; call it before the runner starts any thread. Returns
    what happened
    (``landlock``, ``off`` or ``unavailable: <why>``): the runner reports it in ``session.started``."""
    if not confine:
        _take_prepared(None)  # a spare prepared for a confinement this session does not have: drop it
        return "off"
    if landlock.abi_version() < 1:
        return "unavailable: no Landlock in this kernel"
    hide = [str(p) for p in confine.get("hide", [])]
    try:
        rules = _take_prepared(hide)
        if rules is None:
            w, rules = _base_rules(hide)
        else:
            w = landlock.walk(hide)
        for path in w.regranted(confine.get("allow", [])):
            rules.allow(path, rules.fs)
        for path in confine.get("read", []):  # hidden for writing only (/sys, the cgroup file systems)
            rules.allow(str(path), landlock.READ)
        rules.restrict()
    except OSError as exc:
        return f"unavailable: {exc}"
    global _confined
    _confined = True
    return "landlock"


_confined = False  # this process confined itself (confine_runner): a PermissionError may be Landlock's


def note_refusal(exc: BaseException, workdir: str | os.PathLike[str]) -> None:
    """Add a note to a ``PermissionError`` the runner's confinement explains (Landlock, :func:`confine_runner`): a new
    entry directly in a directory on the way to labd's home (``~``, or ``/tmp`` for a home under it) that the user
    could otherwise create, or anything in the home outside the session's own directory. The bare ``[Errno 13]``
    read as a bug; the note says why and where to write instead. ``workdir``: the session's work directory
    (``<home>/sessions/<id>/work``). Never raises, and notes an exception once."""
    try:
        if not _confined or not isinstance(exc, PermissionError) or not isinstance(exc.filename, str):
            return
        if any(str(n).startswith("labd: ") for n in getattr(exc, "__notes__", ())):
            return  # noted already (a submitted function's, on its way out of the session)
        from pathlib import Path

        work = Path(workdir)
        session, home = work.parent, work.parent.parent.parent
        target = Path(os.path.abspath(exc.filename))  # the cwd may be gone: an OSError, and no note
        if target.is_relative_to(session):
            return
        if target.is_relative_to(home):
            why = f"labd's home ({home}) is out of a session's reach, but for its own directory"
        elif (home.is_relative_to(target.parent) and not os.path.lexists(target)
              and os.access(target.parent, os.W_OK)):  # the user may create it there: Landlock refused it
            why = (f"a session cannot create new entries directly in {target.parent}, a directory on the way to "
                   f"labd's home ({home}); existing files there stay usable")
        else:
            return
        exc.add_note(f"labd: {why}. Write new files in the session's work directory ({work}) or in a folder of "
                     "their own (docs/security.md, \"Runners\").")
    except Exception:  # noqa: BLE001 - a note is a help: never in the way of the error itself
        return
