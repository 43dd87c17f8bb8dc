"""FailureLog (daemon/warnlimit.py): a job a daemon thread repeats that keeps failing is logged without flooding,
and its state is there for `labd status` (the limits monitor's and the search indexer's passes use it); WarnLimiter:
dropped frames are logged a line a second per reason."""

from __future__ import annotations

import errno

import pytest
import structlog
from structlog.testing import capture_logs

from labd.daemon import warnlimit
from labd.daemon.warnlimit import FailureLog, WarnLimiter, describe


def _emfile(path: str) -> OSError:
    return OSError(errno.EMFILE, "Too many open files", path)


def _fail(log: FailureLog, what: str, exc: BaseException) -> None:
    try:
        raise exc
    except OSError as caught:
        log.failed(what, caught)


def test_a_repeating_failure_is_logged_once_then_a_line_a_minute_then_its_end() -> None:
    """The first failure is logged with its traceback; the same error again (every 0.1 s, on a different file each
    time) is not, until a minute has passed: then one warning counts those not logged. A different error is logged
    in full again; the first success says the job works again, after how many failures."""
    clock = [100.0]
    log = FailureLog(structlog.get_logger("test"), "job works again", clock=lambda: clock[0])
    with capture_logs() as logs:
        for i in range(600):  # a minute of failures every 0.1 s, each on another /proc/<pid>/stat
            _fail(log, "job failed", _emfile(f"/proc/{i}/stat"))
            clock[0] += 0.1
    assert [e["log_level"] for e in logs] == ["error"] and logs[0].get("exc_info")
    clock[0] = 160.0  # a minute after the first
    with capture_logs() as logs:
        _fail(log, "job failed", _emfile("/proc"))
    assert len(logs) == 1 and logs[0]["log_level"] == "warning" and logs[0]["failures_not_logged"] == 599
    state = log.failing("job failed")
    assert state is not None and state.count == 601 and state.since == 100.0 and "Errno 24" in state.error
    assert log
    with capture_logs() as logs:
        _fail(log, "job failed", OSError(errno.ENOSPC, "No space left on device"))
        log.worked("job failed")
        log.worked("job failed")  # working on: nothing more to say
    assert [e["log_level"] for e in logs] == ["error", "info"]
    assert logs[1]["event"] == "job works again" and logs[1]["failures"] == 602
    assert log.failing("job failed") is None and not log


def test_jobs_are_told_apart_and_errors_by_errno_not_file_name() -> None:
    """Two jobs failing at once are logged and recover separately; an OSError is described by its errno and
    message, without the file it was about (else every pid of a /proc walk would count as a new error)."""
    log = FailureLog(structlog.get_logger("test"), "works again")
    assert describe(_emfile("/proc/1/stat")) == describe(_emfile("/proc/2/stat")) \
        == "OSError: [Errno 24] Too many open files"
    assert describe(ValueError("bad")) == "ValueError: bad"
    with capture_logs() as logs:
        _fail(log, "a", _emfile("/x"))
        _fail(log, "b", _emfile("/y"))
        log.worked("a")
    assert [(e["log_level"], e["event"]) for e in logs] == [("error", "a"), ("error", "b"), ("info", "works again")]
    assert log.failing("a") is None and log.failing("b") is not None


def test_dropped_frame_warnings_are_a_line_a_second_per_reason_and_count_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """WarnLimiter (how the daemon logs dropped control and runner frames): the first warning of a (message, reason)
    is logged; repeats within WARN_EVERY_S are not (a flood of bad frames is not a flood of log lines); another
    reason is logged at once; the next line after the interval says how many were not logged."""
    clock = [1000.0]
    monkeypatch.setattr(warnlimit.time, "monotonic", lambda: clock[0])
    limiter = WarnLimiter(structlog.get_logger("test"), every=1.0)
    with capture_logs() as logs:
        for _ in range(50):
            limiter.warn("control frame dropped", "bad_signature", error="x")
            clock[0] += 0.01
        limiter.warn("control frame dropped", "malformed")
        clock[0] += 1.0
        limiter.warn("control frame dropped", "bad_signature", error="y")
    assert [(e["event"], e["reason"], e.get("not_logged_since_last")) for e in logs] == [
        ("control frame dropped", "bad_signature", None), ("control frame dropped", "malformed", None),
        ("control frame dropped", "bad_signature", 49)]
    assert [e["log_level"] for e in logs] == ["warning"] * 3 and logs[2]["error"] == "y"
