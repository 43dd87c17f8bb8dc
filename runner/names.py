"""File names that are not valid UTF-8, kept exactly through JSON (events, checkpoint manifests).

A Linux file name is bytes. Python reads one that is not valid UTF-8 (an untarred archive, a pip build, code that
does ``open(b"bad\\xff", "wb")``) as a ``str`` with surrogate escapes (:func:`os.fsdecode`), which is what the work
directory's walk returns and what the runner uses to open the file again. JSON text cannot hold those escapes
(orjson refuses them: before, one such file failed its session for good, and its resume the same way). Two forms:

- **Events** (``file.*``, ``file.shipped``): ``path`` is a display form, the name with each undecodable byte
  written ``\\xNN`` (``os.fsencode(name).decode("utf-8", "backslashreplace")``: what ``labd files`` shows and the
  files table keeps), and ``path_b64`` the exact bytes (standard base64), present only for such names.
- **Checkpoint manifests** (keyed by relative path): such a path's key is a NUL followed by the urlsafe base64 of
  its bytes. No real path contains a NUL, so such a key is never a name, and a restore decodes it back to the
  exact bytes. Every other key is the path itself, as before.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from labd.ipc.safe_files import path_bytes

__all__ = ["is_plain", "display", "path_fields", "path_of_event", "manifest_key", "key_path", "b64_key", "named",
           "BadKey"]

_KEY = "\x00"


class BadKey(ValueError):
    """A manifest key that starts with NUL but is not the base64 of a path."""


def is_plain(rel: str) -> bool:
    """True when ``rel`` is valid UTF-8 as it is (no surrogate escapes): JSON holds it as it is."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display(rel: str) -> str:
    """``rel`` as text: each byte that is not UTF-8 written ``\\xNN``; a plain name unchanged."""
    return rel if is_plain(rel) else os.fsencode(rel).decode("utf-8", "backslashreplace")


def path_fields(rel: str) -> dict[str, str]:
    """An event's ``path`` (display form) and, for a name that is not UTF-8, ``path_b64`` (its exact bytes)."""
    if is_plain(rel):
        return {"path": rel}
    raw = os.fsencode(rel)
    return {"path": raw.decode("utf-8", "backslashreplace"), "path_b64": base64.b64encode(raw).decode("ascii")}


def path_of_event(payload: dict[str, Any]) -> str:
    """The exact relative path an event's :func:`path_fields` describe (surrogate-escaped when not UTF-8)."""
    if payload.get("path_b64"):
        return os.fsdecode(base64.b64decode(payload["path_b64"], validate=True))
    return str(payload["path"])


def manifest_key(rel: str) -> str:
    """The key of ``rel`` in a checkpoint manifest: the path itself, or NUL + urlsafe base64 of its bytes."""
    return rel if is_plain(rel) else _KEY + base64.urlsafe_b64encode(os.fsencode(rel)).decode("ascii")


def b64_key(path_b64: str) -> str | None:
    """The manifest key of the name an event's ``path_b64`` gives (what the files table keeps), or None when that is
    not the base64 of a name (a damaged record: from the runner, whose code is the session's)."""
    raw = path_bytes(path_b64)
    return None if raw is None else manifest_key(os.fsdecode(raw))


def named(key: str) -> str | None:
    """The relative path a manifest key names, or None for a key that names none (:func:`key_path` raises)."""
    try:
        return key_path(key)
    except BadKey:
        return None


def key_path(key: str) -> str:
    """The relative path a manifest key names (the inverse of :func:`manifest_key`); raises :class:`BadKey`."""
    if not key.startswith(_KEY):
        return key
    try:
        raw = base64.urlsafe_b64decode(key[1:].encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadKey(f"not a path key: {key[1:40]!r}") from None
    if not raw or b"\x00" in raw:
        raise BadKey(f"not a path key: {key[1:40]!r}")
    return os.fsdecode(raw)
