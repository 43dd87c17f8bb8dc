"""The dashboard's event loop reports running out of descriptors in one line a minute (frontends/ui/accept_errors.py):
an attack review's flood of half-open connections made asyncio print a traceback per failed accept, 80,276 of them
(32.5 MB of stderr) in about ten seconds."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from labd.frontends.ui.accept_errors import quiet_accept_errors


def test_a_flood_of_accept_errors_is_one_line_and_other_errors_still_reach_asyncio(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """10,000 accept failures for lack of descriptors, reported as asyncio's accept loop reports them: one line on
    stderr, naming the error and the count, no traceback; another error still goes to asyncio's own handler."""
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        exc = OSError(errno.EMFILE, "Too many open files")
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(10_000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": exc})
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "Too many open files" in err and "1 refused" in err, err
            assert "Traceback" not in err and not caplog.records
            loop.call_exception_handler({"message": "something else broke", "exception": ValueError("x")})
        assert [r.getMessage() for r in caplog.records] == ["something else broke"]
    finally:
        loop.close()
