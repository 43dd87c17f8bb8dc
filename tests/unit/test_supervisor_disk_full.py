"""A launch that finds the disk full keeps the session queued (daemon/admission.py), instead of ending it."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from labd.daemon import supervisor as supervisor_mod
from labd.daemon.limits import Limits
from labd.daemon.supervisor import Supervisor


class _Launcher:
    """Raises ``fail`` (an exception or None) at each launch; counts successful ones."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.launched: list[str] = []

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        if self.fail is not None:
            raise self.fail
        self.launched.append(spec["sid"])
        return 10_000 + len(self.launched), 0.0


class _Monitor:
    def watch(self, *_a: Any) -> None:
        pass


def _supervisor() -> tuple[Supervisor, _Launcher, list[tuple[str, str, dict[str, Any]]]]:
    posts: list[tuple[str, str, dict[str, Any]]] = []
    launcher = _Launcher()
    sup = Supervisor(launcher, _Monitor(), lambda sid, kind, payload, **_: posts.append((sid, kind, payload)),  # type: ignore[arg-type]
                     lambda *_a: None, term_grace=1.0)
    sup.spec_for = lambda q: {"sid": q.sid}
    for i, sid in enumerate(("a", "b")):
        sup.queue.push(sup.queue.entry(sid, "demo.sleep", {}, Limits(), "/w", 0, float(i)))
    return sup, launcher, posts


def test_a_full_disk_at_launch_keeps_the_sessions_queued_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while launching (writing the runner's key) ends nothing: both sessions stay queued in their order and
    start, in that order, once a launch succeeds; the queue waits meanwhile rather than retry every tick. (Before,
    the session at the head ended ``failed`` "launch failed: [Errno 28] ..." for good.)"""
    sup, launcher, posts = _supervisor()
    launcher.fail = OSError(errno.ENOSPC, "No space left on device")
    sup.pump()
    assert not any(kind == "session.ended" for _sid, kind, _p in posts)
    assert "a" in sup.queue and "b" in sup.queue and sup.queue.positions() == {"a": 1, "b": 2}
    launcher.fail = None
    sup.pump()  # held: not retried at once
    assert launcher.launched == []
    monkeypatch.setattr(supervisor_mod.time, "monotonic", lambda: 1e12)  # the hold has passed
    sup.pump()
    assert launcher.launched == ["a", "b"] and not any(kind == "session.ended" for _sid, kind, _p in posts)


def test_any_other_launch_failure_still_ends_the_session_failed() -> None:
    """A launch failure that is not a full disk (here the template died) ends the session ``failed`` with the
    reason, as before, and the next one is tried."""
    sup, launcher, posts = _supervisor()
    launcher.fail = RuntimeError("runner template died while starting the runner")
    sup.pump()
    ended = [(sid, p) for sid, kind, p in posts if kind == "session.ended"]
    assert [sid for sid, _p in ended] == ["a", "b"]
    assert ended[0][1]["status"] == "failed" and "template died" in ended[0][1]["reason"]


def test_a_session_submitted_to_an_empty_queue_on_a_full_disk_is_queued_not_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new session that finds the queue empty is launched at once; when that launch finds the disk full, the
    session is queued (``session.queued``, position 1, saying why: the disk) and launched by a later pump once a launch
    succeeds. It was dropped: neither launched nor queued, ``created`` for good even after the disk had room again."""
    posts: list[tuple[str, str, dict[str, Any]]] = []
    launcher = _Launcher()
    sup = Supervisor(launcher, _Monitor(), lambda sid, kind, payload, **_: posts.append((sid, kind, payload)),  # type: ignore[arg-type]
                     lambda *_a: None, term_grace=1.0)
    sup.spec_for = lambda q: {"sid": q.sid}
    launcher.fail = OSError(errno.ENOSPC, "No space left on device")
    assert sup.submit(sup.queue.entry("c", "demo.sleep", {}, Limits(), "/w", 0, 0.0)) == 1
    assert "c" in sup.queue and [(sid, kind) for sid, kind, _p in posts] == [("c", "session.queued")]
    assert posts[0][2]["why"] == "the disk is full (no room for its event spool)"  # not "max_sessions, memory_total"
    launcher.fail = None
    monkeypatch.setattr(supervisor_mod.time, "monotonic", lambda: 1e12)  # the hold has passed
    sup.pump()
    assert launcher.launched == ["c"] and "c" not in sup.queue


def test_a_session_queued_behind_a_launch_the_full_disk_refused_is_told_it_waits_for_disk() -> None:
    """While launches find the disk full, a new session queued behind them says why it waits (``why``: the disk is
    full), not the run queue's default "room in the run queue (max_sessions, memory_total)", which sent an admin
    whose home set neither looking there; and each such launch has the launcher renew what it keeps ready (its
    spare runner and checker hold files beside the home open), where the launcher can."""
    from labd.daemon.admission import DISK_FULL

    sup, launcher, posts = _supervisor()
    renewed: list[bool] = []
    launcher.renew_spares = lambda: renewed.append(True)  # type: ignore[attr-defined]
    launcher.fail = OSError(errno.ENOSPC, "No space left on device")
    sup.pump()
    assert renewed == [True]
    sup.submit(sup.queue.entry("c", "demo.sleep", {}, Limits(), "/w", 0, 3.0))
    [queued] = [p for sid, kind, p in posts if sid == "c" and kind == "session.queued"]
    assert queued.get("why") == DISK_FULL and queued["position"] == 3
