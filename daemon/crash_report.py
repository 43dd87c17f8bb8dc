"""What a runner left in its crash file (``sessions/<id>/runner.stderr``: its fd 2, with faulthandler's report of a
fatal error; runner/session.own_crash_channel), read when it exits on a signal or a non-zero code, for the reason
``session.ended`` records."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from labd.runner.withhold import mark

__all__ = ["CRASH_TAIL", "crash_text"]

#: characters of a runner's crash file recorded in ``session.ended`` (its end: where the fatal error is)
CRASH_TAIL = 2000


def crash_text(crash_file: Path | str | None, secrets: Iterable[tuple[str, str]]) -> str | None:
    """The end of a runner's crash file (at most :data:`CRASH_TAIL` characters, from a line start when it is cut,
    the session's secrets withheld); None if it is empty or cannot be read. Read without following a link: the
    file is in the session's directory, which session code can write."""
    if crash_file is None:
        return None
    try:
        fd = os.open(crash_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_size:
            return None
        raw = os.pread(fd, 4 * CRASH_TAIL, max(0, st.st_size - 4 * CRASH_TAIL))
    except OSError:
        return None
    finally:
        os.close(fd)
    text = raw.decode("utf-8", "replace").strip()
    if len(text) > CRASH_TAIL or len(raw) < st.st_size:
        text = text[-CRASH_TAIL:]
        text = text.split("\n", 1)[1] if "\n" in text else text  # from a line start: no piece of a secret
    for name, value in secrets:
        text = text.replace(value, mark(name))
    return text or None
