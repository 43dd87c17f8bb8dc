"""A session the monitor kills for a limit ends saying which limit, even when the daemon's main loop handles the
runner's exit before the monitor's note (two sockets; under load, the exit came first): the session ended "runner
killed by SIGKILL" and the note, read after the end, was dropped (seen in the full suite as a memory breach held by
the kernel). The monitor keeps a kill's note until the supervisor takes it at the exit."""

from __future__ import annotations

from typing import Any

import zmq

from labd.daemon.launcher import ExitInfo
from labd.daemon.limits import Limits
from labd.daemon.monitor import Monitor
from labd.daemon.supervisor import Running, Supervisor
from labd.daemon.watched import Watched


class _Notes:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_pyobj(self, note: tuple[Any, ...]) -> None:
        self.sent.append(note)


class _Launcher:
    def signal(self, pid: int, sig: int) -> bool:
        return False


def test_the_exit_handled_before_the_kill_note_still_ends_the_session_as_a_limit_kill() -> None:
    """The monitor sends a memory breach's note and kills; the supervisor handles the exit first: the session's
    record gets the ``limit.exceeded`` and ends by ``sigkill``; the note, handled afterwards, adds nothing (no
    second ``limit.exceeded``). A kill's note is taken once, and only for the runner it was about."""
    ctx = zmq.Context()
    monitor = Monitor(ctx, 1.0, 1.0)
    monitor.notes = _Notes()  # type: ignore[assignment]
    posts: list[tuple[str, str, dict[str, Any]]] = []
    sup = Supervisor(_Launcher(), monitor, lambda sid, kind, payload, **_: posts.append((sid, kind, payload)),  # type: ignore[arg-type]
                     lambda *_a: None, term_grace=1.0)
    limits = Limits.from_dict({"memory": 150 << 20})
    sup.running["s1"] = Running("s1", 4242, 0.0, limits, 0.0)
    note = {"limit": "memory", "measured": 200 << 20, "max": 150 << 20, "unit": "bytes", "action": "kill"}
    monitor._limit_note(Watched("s1", 4242, limits, 0.0), note, None)  # noqa: SLF001 - what a breach does
    sup.on_exit(ExitInfo(4242, None, 9))
    for late in monitor.notes.sent:  # type: ignore[attr-defined]
        sup.on_note(late)
    kinds = [(kind, p.get("ended_by")) for _sid, kind, p in posts if kind in ("limit.exceeded", "session.ended")]
    assert kinds == [("limit.exceeded", None), ("session.ended", "sigkill")], posts
    assert monitor.take_kill("s1", 4242) is None  # taken
    monitor._limit_note(Watched("s1", 4343, limits, 0.0), note, None)  # noqa: SLF001 - a resumed run's runner
    assert monitor.take_kill("s1", 4242) is None
    ctx.term()
