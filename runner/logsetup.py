"""Logging inside a runner: every structlog and stdlib logging record becomes a ``log`` event.

This configuration is process-global, which is exactly right here: the process *is* the session.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from labd.runner.context import current_node

__all__ = ["configure_logging", "logging_after_fork"]

Emit = Callable[..., int]
_RESERVED = {"event", "level", "logger", "timestamp"}


def configure_logging(emit: Emit, session_id: str) -> Any:
    """Route structlog and stdlib logging to ``emit``; return the session's bound structlog logger."""

    runner_pid = os.getpid()

    def to_event(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        fields = {k: v for k, v in event_dict.items() if k not in _RESERVED}
        if os.getpid() != runner_pid:  # a child the workflow forked: no event path (runner/forksafe.py)
            print(f"[{event_dict.get('level', method)}] {event_dict.get('event', '')}",
                  *(f"{k}={v!r}" for k, v in fields.items()), file=sys.stderr)
            raise structlog.DropEvent
        emit("log", {"level": event_dict.get("level", method), "event": str(event_dict.get("event", "")),
                     "logger": event_dict.get("logger", "structlog"), "fields": fields}, current_node.get())
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
                emit("log", {"level": record.levelname.lower(), "event": record.getMessage(),
                             "logger": record.name, "fields": fields}, current_node.get())
            except Exception:  # noqa: BLE001 - logging must never break the workflow
                self.handleError(record)

    root = logging.getLogger()
    root.handlers[:] = [EventHandler()]
    root.setLevel(logging.INFO)
    return structlog.get_logger("workflow").bind(session_id=session_id)


def logging_after_fork() -> None:
    """In a child forked by the workflow: log records go to its stderr (the runner's captured output), since
    the child has no event path of its own (see runner/forksafe.py). Runs after the interpreter's own
    after-fork handlers, which re-create the locks of logging and of every handler. Loggers the workflow
    bound before the fork still end in ``configure_logging``'s processor, which writes to stderr there."""
    logging.getLogger().handlers[:] = [logging.StreamHandler(sys.stderr)]
    structlog.reset_defaults()
