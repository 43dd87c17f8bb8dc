"""Logging inside a runner: every structlog and stdlib logging record becomes a ``log`` event.

This configuration is process-global, which is exactly right here: the process *is* the session. The records count
against the session's output cap (the ``emit`` the runner passes in charges them:
:meth:`labd.runner.outputcap.OutputCap.charge`): past it they are dropped.
"""

from __future__ import annotations

import logging
import os
import reprlib
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from labd.ipc.wire import PayloadError, encode_json
from labd.runner.context import current_node

__all__ = ["configure_logging", "logging_after_fork"]

Emit = Callable[..., int]
_RESERVED = {"event", "level", "logger", "timestamp"}


def configure_logging(emit: Emit, session_id: str) -> Any:
    """Route structlog and stdlib logging to ``emit`` (the runner's: charged to the session's output cap, which
    drops what does not fit); return the session's bound structlog logger."""

    runner_pid = os.getpid()

    def to_event(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        fields = {k: v for k, v in event_dict.items() if k not in _RESERVED}
        text = _text(event_dict.get("event", ""))
        if os.getpid() != runner_pid:  # a child the workflow forked: no event path (runner/forksafe.py)
            print(f"[{event_dict.get('level', method)}] {text}",
                  *(f"{k}={_repr(v)}" for k, v in fields.items()), file=sys.stderr)
            raise structlog.DropEvent
        payload = {"level": event_dict.get("level", method), "event": text,
                   "logger": event_dict.get("logger", "structlog"), "fields": fields}
        try:
            emit("log", payload, current_node.get())
        except Exception:  # noqa: BLE001 - logging never raises into the workflow: record what can be recorded
            _record_placeholders(emit, payload, fields)
        raise structlog.DropEvent

    structlog.reset_defaults()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.format_exc_info, to_event],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )

    class EventHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields: dict[str, Any] = {}
                if record.exc_info:
                    fields["exception"] = logging.Formatter().formatException(record.exc_info)
                payload = {"level": record.levelname.lower(), "event": record.getMessage(),
                           "logger": record.name, "fields": fields}
                emit("log", payload, current_node.get())
            except Exception:  # noqa: BLE001 - logging must never break the workflow
                self.handleError(record)

    handler = EventHandler()
    handler.addFilter(_ag2_close_noise)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return structlog.get_logger("workflow").bind(session_id=session_id)


def _ag2_close_noise(record: logging.LogRecord) -> bool:
    """False for asyncio's report that it could not close one of ag2's own turn generators (``Agent._turn_scope``,
    ``_drive_scope``) left open by an exception that ended a turn (a budget's stop, a policy's refusal): a
    traceback of ag2's internals, recorded as an error after a clean stop, with nothing for the user to do (the
    exception that ended the turn is recorded in its own right)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (record.name == "asyncio" and isinstance(exc, RuntimeError) and "didn't stop after athrow" in str(exc)
                and "<async_generator object Agent._" in str(record.msg))


#: a log field that cannot be recorded becomes ``{"unrecorded": why, "repr": its repr cut to this many chars}``
PLACEHOLDER_REPR = 500
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 8, PLACEHOLDER_REPR, PLACEHOLDER_REPR, 100


def _short_repr(value: Any) -> str:
    """A bounded repr (nesting shown to 8 levels, long parts cut); never raises."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - reprlib calls the value's own __repr__ for some types
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= PLACEHOLDER_REPR else text[:PLACEHOLDER_REPR] + "..."


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a repr that raises (or recurses too deep)
        return _short_repr(value)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a message whose __str__ raises
        return _short_repr(value)


def _placeholder(value: Any, exc: BaseException) -> dict[str, str]:
    why = str(exc) if isinstance(exc, PayloadError) else f"{type(exc).__name__}: {exc}"
    return {"unrecorded": why[:300], "repr": _short_repr(value)}


def _recordable(value: Any) -> Any:
    """``value`` if a log event can carry it (checked at the depth it has there: event, payload, fields), else a
    placeholder saying why, with its bounded repr: e.g. a value nested deeper than JSON can carry."""
    try:
        encode_json([{"fields": {"k": value}}])
    except Exception as exc:  # noqa: BLE001 - PayloadError (too deep), or a repr that raises
        return _placeholder(value, exc)
    return value


def _record_placeholders(emit: Emit, payload: dict[str, Any], fields: dict[str, Any]) -> None:
    """A log record whose fields could not be recorded: again, each such field replaced by a placeholder (all of
    them if that still fails). Never raises: what cannot be recorded even so is said on stderr (captured)."""
    payload["fields"] = {k: _recordable(v) for k, v in fields.items()}
    try:
        emit("log", payload, current_node.get())
        return
    except Exception as exc:  # noqa: BLE001
        payload["fields"] = {k: _placeholder(v, exc) for k, v in fields.items()}
    try:
        emit("log", payload, current_node.get())
    except Exception as exc:  # noqa: BLE001
        print(f"labd: a log record could not be recorded ({type(exc).__name__}: {exc}): "
              f"{_short_repr(payload.get('event'))}", file=sys.stderr)


def logging_after_fork() -> None:
    """In a child forked by the workflow: log records go to its stderr (the runner's captured output), since
    the child has no event path of its own (see runner/forksafe.py). Runs after the interpreter's own
    after-fork handlers, which re-create the locks of logging and of every handler. Loggers the workflow
    bound before the fork still end in ``configure_logging``'s processor, which writes to stderr there."""
    logging.getLogger().handlers[:] = [logging.StreamHandler(sys.stderr)]
    structlog.reset_defaults()
