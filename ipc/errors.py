"""The SDK's error type and its check of timeouts: what every :class:`~labd.ipc.client.Client` call may raise; and
how an exception is described in the record (:func:`describe_exception`, never raising)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["LabdError", "check_timeout", "exception_text", "describe_exception"]


class LabdError(Exception):
    """A structured error from the daemon (or from reaching it): ``code``, ``message``, ``details``."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.details = code, message, details or {}


def check_timeout(timeout: float | None) -> float | None:
    """A ``timeout`` given to a :class:`Client` method, checked before anything waits: seconds >= 0; ``None`` or
    ``math.inf`` for no limit (both give None). NaN (every deadline compares false with it: it never ran out), a
    negative number or anything else is a :class:`ValueError`."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 (None or math.inf: no limit), not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or, when the exception's ``__str__`` raises, ``<Type: str() failed: Error: why>``: a broken
    ``__str__`` must not replace the exception being described by its own (the session would fail with that one)."""
    try:
        return str(exc)
    except Exception as err:  # noqa: BLE001 - any __str__ may raise anything
        try:
            why = f"{type(err).__name__}: {err}"
        except Exception:  # noqa: BLE001 - the second exception's __str__ may fail as well
            why = type(err).__name__
        return f"<{type(exc).__name__}: str() failed: {why}>"


def describe_exception(exc: BaseException) -> str:
    """``"Type: message"`` for the record (a step's or a session's error), whatever ``exc.__str__`` does; just
    ``"Type"`` for an exception without a message (a bare ``raise KeyboardInterrupt``)."""
    text = exception_text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
