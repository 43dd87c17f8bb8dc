"""Writing a whole message to a file descriptor: the template's pipes to its children (spares, checkers)
and the spool's rewrite."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the blocking ``fd`` (a pipe takes at most its buffer per call, a file may take
    less than asked); raises ``OSError`` (EPIPE: the reader is gone) as ``os.write`` does."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
