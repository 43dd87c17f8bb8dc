"""Rate-limited warnings: a flood of bad input, or a job failing every second, must not become a flood of log lines.

:class:`WarnLimiter`: each (message, reason) is logged at most once per :data:`WARN_EVERY_S`; the next line that gets
through says how many were not logged meanwhile. Counters (``labd status --json``) keep the exact numbers.

:class:`FailureLog`: a job a daemon thread repeats (the search indexer's pass, the limits monitor's pass over the
process table) that fails again and again (a full disk, no file descriptors left): its first failure is logged with
the traceback, the repeats at most one line per :data:`REPEAT_LOG_S` with how many were not logged, and its first
success after that says it works again. It also keeps how long and how often the job has been failing, for
``labd status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["WarnLimiter", "WARN_EVERY_S", "FailureLog", "Failing", "REPEAT_LOG_S", "describe"]

WARN_EVERY_S = 1.0
#: while the same error repeats, a line at most this often, with the count of those not logged
REPEAT_LOG_S = 60.0


class WarnLimiter:
    """Wraps a structlog logger's ``warning`` for one thread (the daemon's main loop)."""

    def __init__(self, log: Any, every: float = WARN_EVERY_S) -> None:
        self.log = log
        self.every = every
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, what: str, reason: str, **fields: Any) -> None:
        key = (what, reason)
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self._seen[key] = (last, suppressed + 1)
            return
        if len(self._seen) > 1000:  # reasons are a short fixed list; bound it anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        if suppressed:
            fields["not_logged_since_last"] = suppressed
        self.log.warning(what, reason=reason, **fields)


def describe(exc: BaseException) -> str:
    """The error as told apart from others: an OSError by its type and errno, without the file name (a pass that
    fails on ``/proc/<pid>/stat`` fails with the same error for every pid)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Failing:
    """A job that is failing: its latest error, since when (monotonic), how often in a row, and the log's state."""

    error: str
    since: float
    count: int = 1
    logged_at: float = 0.0
    not_logged: int = 0


class FailureLog:
    """Failures of repeated jobs, by name (``what``), logged without flooding; one instance per thread.

    ``failed(what, exc)`` from the ``except`` block (the first failure, or a different error, is logged with its
    traceback; the same error again at most once per ``every`` seconds, with ``failures_not_logged``);
    ``worked(what)`` after a success (logs ``recovered`` once if ``what`` was failing). ``clock`` defaults to
    :func:`time.monotonic`, looked up at each call.
    """

    def __init__(self, log: Any, recovered: str, every: float = REPEAT_LOG_S,
                 clock: Callable[[], float] | None = None) -> None:
        self.log = log
        self.recovered = recovered
        self.every = every
        self._clock = clock
        self._failing: dict[str, Failing] = {}

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.monotonic()

    def failed(self, what: str, exc: BaseException, **fields: Any) -> None:
        """Log a failure of ``what`` (call it from the ``except`` block: the first line has the traceback)."""
        text, now = describe(exc), self._now()
        seen = self._failing.get(what)
        if seen is None or seen.error != text:
            self.log.exception(what, **fields)
            if seen is None:
                self._failing[what] = Failing(text, now, logged_at=now)
            else:
                seen.error, seen.count, seen.logged_at, seen.not_logged = text, seen.count + 1, now, 0
        elif now - seen.logged_at >= self.every:
            self.log.warning(what, error=text, failures_not_logged=seen.not_logged, **fields)
            seen.count, seen.logged_at, seen.not_logged = seen.count + 1, now, 0
        else:
            seen.count, seen.not_logged = seen.count + 1, seen.not_logged + 1

    def worked(self, what: str) -> None:
        """``what`` succeeded: if it was failing, say it works again."""
        seen = self._failing.pop(what, None)
        if seen is not None:
            self.log.info(self.recovered, after=what, failures=seen.count,
                          failing_for_s=round(self._now() - seen.since, 1))

    def failing(self, what: str) -> Failing | None:
        """The state of ``what`` while it fails (a copy), else None."""
        seen = self._failing.get(what)
        return None if seen is None else Failing(seen.error, seen.since, seen.count, seen.logged_at, seen.not_logged)

    def __bool__(self) -> bool:
        """True while any job is failing."""
        return bool(self._failing)
