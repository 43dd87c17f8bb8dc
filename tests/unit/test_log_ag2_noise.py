"""What the runner's logging records of asyncio's reports (runner/logsetup.py)."""

from __future__ import annotations

import logging
from typing import Any

import structlog

from labd.runner.logsetup import configure_logging


def _report(agen_repr: str, exc: BaseException) -> None:
    """asyncio's own report when closing an async generator fails (as its default exception handler logs it)."""
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - a report of exactly this
        logging.getLogger("asyncio").error(
            f"an error occurred during closing of asynchronous generator {agen_repr}\nasyncgen: {agen_repr}",
            exc_info=(type(caught), caught, caught.__traceback__))


def test_ag2s_turn_generators_left_open_by_a_stop_are_not_recorded_as_errors() -> None:
    """A budget's stop ends an ag2 turn with an exception; asyncio then fails to close ag2's ``_turn_scope`` and
    ``_drive_scope`` generators and reports it with a traceback of ag2's internals, which `labd logs` showed as
    errors after a clean stop. Those two reports are not recorded; any other asyncio error still is."""
    got: list[dict[str, Any]] = []
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(lambda kind, payload, node=None: got.append(payload) or 1, "s1")
    try:
        stuck = RuntimeError("generator didn't stop after athrow()")
        _report("<async_generator object Agent._turn_scope at 0x7f00>", stuck)
        _report("<async_generator object Agent._drive_scope at 0x7f01>", stuck)
        assert got == []
        _report("<async_generator object mine at 0x7f02>", stuck)
        _report("<async_generator object Agent._turn_scope at 0x7f03>", ValueError("something else"))
        assert [p["level"] for p in got] == ["error", "error"] and all(p["logger"] == "asyncio" for p in got)
    finally:  # this process's logging as it was (other tests run in it)
        root.handlers[:], root.level = handlers, level
        structlog.configure(**saved)
