"""A launch that fails after the session's cgroup was made releases that group (daemon/cgroups.py), whether the
template did not answer or the launch raised on the way (no disk for the runner's key file, a template that died
and could not be restarted): the failed session is never watched, so no burial would release it."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from labd.daemon.launcher import LaunchError
from labd.daemon.template_launcher import TemplateLauncher


class _Groups:
    def __init__(self) -> None:
        self.released: list[str] = []

    def create(self, sid: str, memory: int | None) -> tuple[list[str] | None, list[str] | None]:
        return [f"/sys/fs/cgroup/x/{sid}/cgroup.procs"], ["/sys/fs/cgroup/x/next/cgroup.procs"]

    def release(self, sid: str, group: str | None = None) -> None:
        self.released.append(sid)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     LaunchError("runner template did not start")])
def test_a_launch_that_raises_releases_the_sessions_group(monkeypatch: pytest.MonkeyPatch,
                                                          failure: Exception) -> None:
    """The spawn request cannot be sent: the launch raises, and the group made for the session is released (it
    stayed the session's for good: never removed, never swept as a stray)."""
    launcher = TemplateLauncher()  # not spawned: _send is replaced
    launcher.cgroups = groups = _Groups()

    def send(_msg: dict[str, Any]) -> None:
        raise failure

    monkeypatch.setattr(launcher, "_send", send)
    with pytest.raises(type(failure)):
        launcher.launch({"session_id": "s1", "workflow": "demo.sleep"})
    assert groups.released == ["s1"]


def test_a_spawn_the_template_does_not_answer_releases_the_sessions_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """As before: no answer to the spawn request, the group goes too."""
    launcher = TemplateLauncher()
    launcher.cgroups = groups = _Groups()
    monkeypatch.setattr(launcher, "_send", lambda _msg: None)
    monkeypatch.setattr(launcher, "_wait_for", lambda _pred: None)
    with pytest.raises(LaunchError):
        launcher.launch({"session_id": "s1", "workflow": "demo.sleep"})
    assert groups.released == ["s1"]
