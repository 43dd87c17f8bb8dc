"""The daemon's logging: structlog, JSON lines for journald and files, pretty output in a terminal."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from labd.daemon.systemd import journal_prefixer, under_journald

__all__ = ["configure"]


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=repr).decode()


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once for the daemon process (``fmt``: auto | json | console)."""
    pretty = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    )
    if under_journald(sys.stderr):  # journald reads a <N> prefix as the line's priority
        renderer = journal_prefixer(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
