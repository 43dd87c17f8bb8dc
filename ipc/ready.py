"""Waiting for a daemon to answer: for scripts that start one (``labd wait``, ``labd serve --detach``)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

from labd.ipc.client import Client, LabdError, check_timeout

__all__ = ["wait_for_daemon"]


def wait_for_daemon(home: str | os.PathLike[str] | None = None, timeout: float = 30.0,
                    interval: float = 0.05) -> dict[str, Any]:
    """Return the daemon's ``ping`` reply as soon as the daemon of ``home`` answers.

    Retries while there is no daemon yet (no connection file, or a stale one) or it does not answer;
    raises :class:`LabdError` ``timeout`` after ``timeout`` seconds, and any other error (e.g.
    ``unsafe_runtime_dir``) at once, since waiting cannot fix it.
    """
    limit = check_timeout(timeout)  # NaN would never run out: a ValueError, as for every timeout of the SDK
    deadline = time.monotonic() + (math.inf if limit is None else limit)
    while True:
        left = deadline - time.monotonic()
        try:
            with Client(home, timeout=min(2.0, max(0.2, left))) as c:
                return c.ping()
        except LabdError as exc:
            if exc.code not in ("no_daemon", "timeout"):
                raise
            if time.monotonic() >= deadline:
                raise LabdError("timeout", f"no labd daemon answered within {timeout:g}s ({exc.message})",
                                {"last_error": exc.code}) from None
        time.sleep(interval)
