"""Pipes between the template and its children (spares, checkers): writing a whole message."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the blocking ``fd`` (a pipe takes at most its buffer per call); raises
    ``OSError`` (EPIPE: the reader is gone) as ``os.write`` does."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
