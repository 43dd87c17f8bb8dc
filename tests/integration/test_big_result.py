"""A workflow result too large for one event (over the daemon's ``max_message``): the session completes, and the
record says the result is missing, how large it was and what the limit is, instead of ending ``failed`` with
"runner exited with code 0 before reporting an outcome" (the ``session.finished`` event replaced by an
``event.truncated`` marker). ``Client.result`` raises ``ResultMissing`` with that reason, for a workflow and for a
submitted function, and no longer returns ``None`` for a result the record lacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import labd
from labd.ipc.wire import DEFAULT_MAX_MESSAGE
from tests.conftest import SMALL_MAX_MESSAGE
from tests.integration.cli_support import labd as labd_cli

pytestmark = pytest.mark.timeout(180)

FLOWS = '''
def big(ctx, size: int = 0):
    return "kinkajou " + "x" * size

def deep(ctx):
    value = None
    for _ in range(300):
        value = [value]
    return value

def nothing(ctx):
    return None

def loud_failure(ctx, size: int = 0):
    raise ValueError("wombat " + "y" * size)
'''


@pytest.fixture
def flows(tmp_path: Path) -> str:
    path = tmp_path / "bigflows.py"
    path.write_text(FLOWS)
    return str(path)


def _finished(c, sid: str) -> dict:
    found = c.events(sid, kinds=["session.finished"], limit=1)["events"]
    assert found, f"no session.finished in the record of {sid}"
    return found[0]["payload"]  # type: ignore[no-any-return]


def _kinds(c, sid: str) -> list[str]:
    return [e["kind"] for e in c.history(sid)]


def test_result_just_over_the_default_limit_completes_and_says_why_it_is_missing(shared_daemon, flows) -> None:
    """A result just over 16 MiB (DEFAULT_MAX_MESSAGE, the daemon's default max_message): the session completes;
    session.finished carries error "result not recorded: too large (N bytes ...; at most M ...)" with N over the
    limit and M under it; no event.truncated; Client.result raises RemoteError ResultMissing with that reason;
    `labd show` says it on a result line."""
    with shared_daemon.client() as c:
        sid = c.start(f"{flows}:big", params={"size": DEFAULT_MAX_MESSAGE + 1024})
        row = c.wait(sid, timeout=120)
        assert row["status"] == "completed", row
        finished = _finished(c, sid)
        assert "result" not in finished and finished["outcome"] == "completed"
        found = re.fullmatch(r"result not recorded: too large \(([\d,]+) bytes as an event; one event may take at "
                             r"most ([\d,]+) bytes: the daemon's max_message.*", finished["error"])
        assert found, finished["error"]
        size, room = (int(g.replace(",", "")) for g in found.groups())
        assert size > DEFAULT_MAX_MESSAGE > room > DEFAULT_MAX_MESSAGE - 4096
        assert "event.truncated" not in _kinds(c, sid)
        with pytest.raises(labd.RemoteError) as info:
            c.result(sid, timeout=30)
        assert info.value.type_name == "ResultMissing" and info.value.status == "completed"
        assert "too large" in info.value.message and f"{size:,} bytes" in info.value.message
    show = labd_cli("show", sid)
    assert "status    completed\n" in show.stdout and "result    result not recorded: too large" in show.stdout


def test_small_limit_result_and_failure_text_over_it(shared_small_daemon, flows) -> None:
    """Under a 64 KiB max_message: a result over it completes without the result (as above); a result under it is
    returned whole; None is still a result (Client.result returns None); a failure whose message is over the limit
    still fails with its own error, cut short, rather than "runner exited ... before reporting an outcome"."""
    with shared_small_daemon.client() as c:
        over = c.start(f"{flows}:big", params={"size": SMALL_MAX_MESSAGE})
        under = c.start(f"{flows}:big", params={"size": 1000})
        none = c.start(f"{flows}:nothing")
        loud = c.start(f"{flows}:loud_failure", params={"size": 2 * SMALL_MAX_MESSAGE})
        for sid in (over, under, none, loud):
            c.wait(sid, timeout=60)
        assert c.session(over)["status"] == "completed"
        assert _finished(c, over)["error"].startswith("result not recorded: too large")
        with pytest.raises(labd.RemoteError, match="ResultMissing: .*too large"):
            c.result(over, timeout=30)
        assert c.result(under, timeout=30) == "kinkajou " + "x" * 1000
        assert c.result(none, timeout=30) is None
        row = c.session(loud)
        assert row["status"] == "failed" and row["reason"].startswith("workflow failed: ValueError: wombat yyy"), row
        assert "more characters" in _finished(c, loud)["error"] and "event.truncated" not in _kinds(c, loud)


def test_result_nested_too_deeply_raises_result_missing(shared_daemon, flows) -> None:
    """A result nested deeper than 255 levels completes without it (as before), and Client.result raises
    ResultMissing naming the nesting, instead of returning None as if the workflow had returned None."""
    with shared_daemon.client() as c:
        sid = c.start(f"{flows}:deep")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        with pytest.raises(labd.RemoteError) as info:
            c.result(sid, timeout=30)
        assert info.value.type_name == "ResultMissing" and "nested deeper than 255 levels" in info.value.message


def _long_named() -> object:
    """An instance of a class made in the session whose name is 40,000 characters: its pickle (~40 KB) is under the
    submitted function's result limit, but the result event (the pickle in base64, plus the type's name) is not."""
    cls = type("C", (), {})
    cls.__qualname__ = "Q" * 40_000
    return cls()


def test_submitted_function_result_too_large_for_its_event(shared_small_daemon) -> None:
    """A submitted function's value whose pickle passes the runner's own size check but whose result event is still
    over max_message: the session completes, and Client.result raises ResultMissing saying the result was too large
    (before: the session failed "runner exited with code 0 before reporting an outcome", SessionEnded)."""
    with shared_small_daemon.client() as c:
        sid = c.submit(_long_named)
        with pytest.raises(labd.RemoteError) as info:
            c.result(sid, timeout=60)
        assert c.session(sid)["status"] == "completed"
        assert info.value.type_name == "ResultMissing" and "too large" in info.value.message, str(info.value)


def test_remote_error_for_a_completed_session_without_its_result() -> None:
    """labd.ipc.functions.remote_error: a completed session whose session.finished says why its result is missing
    gives ResultMissing with that reason (not a type name made of the error's first words)."""
    from labd.ipc.functions import remote_error, result_missing

    finished = {"outcome": "completed", "error": "result not recorded: too large (20,000,000 bytes as an event; "
                "one event may take at most 16,777,000 bytes: ...)"}
    err = remote_error({"id": "s1", "status": "completed"}, finished, None)
    assert err.type_name == "ResultMissing" and err.message.startswith("session s1 completed but its result is not in "
                                                                       "the record: too large (20,000,000 bytes")
    assert result_missing(finished) and not result_missing({"outcome": "completed", "result": None})
    assert remote_error({"id": "s1", "status": "completed"}, None, None).type_name == "ResultMissing"
