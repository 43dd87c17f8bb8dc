"""``labd wait SESSION...`` when its daemon does not come back: the CLI's words, naming what keeps running."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from labd.frontends.cli.base import Ctx
from labd.frontends.cli.waits import RESTART_WAIT_S, wait_all
from labd.ipc import LabdError


class GoneDaemon:
    """A client whose daemon stopped for good: the first session ends, then waiting fails as ``Client.wait`` does
    once ``restart_wait`` has passed with no daemon."""

    restart_wait = 0.0

    def __init__(self) -> None:
        self.asked: list[str] = []

    def lookup(self, sid: str) -> dict[str, Any]:  # every reference is resolved before anything is waited for
        return {"id": sid, "status": "running"}

    def session(self, sid: str) -> dict[str, Any]:  # what a quiet wait asks first (is it waiting for a person?)
        raise LabdError("no_daemon", "no labd daemon is running")

    def wait(self, sid: str, timeout: float | None, *, on_event: Any = None) -> dict[str, Any]:
        self.asked.append(sid)
        if len(self.asked) == 1:
            return {"id": sid, "status": "completed"}
        raise LabdError("no_daemon", f"... call result({sid!r}) or wait({sid!r}) again ...",
                        {"pid": 1, "session": sid})


def test_wait_without_a_daemon_says_which_sessions_keep_running_in_cli_words() -> None:
    """The sessions not yet ended are named with the command to wait for them again, not Python calls; the client
    was given a minute to see a daemon serve again (a restart), whatever its own setting."""
    ctx = Ctx(argparse.Namespace())
    client = GoneDaemon()
    ctx._client = client  # type: ignore[assignment]
    with pytest.raises(LabdError) as info:
        wait_all(ctx, ["aaa111", "bbb222", "ccc333"], None)
    assert client.restart_wait == RESTART_WAIT_S
    msg = info.value.message
    assert info.value.code == "no_daemon" and "bbb222, ccc333 keep running" in msg, msg
    assert "`labd wait bbb222 ccc333` again" in msg and "result(" not in msg and "aaa111" not in msg
