"""A memory kill's peak reaches the record before the session's end: the monitor's breach note carries the sample.

The monitor sent a breach's ``resource.sample`` straight to ingest, on its own socket, while the breach note went
to the supervisor, which posts ``limit.exceeded`` and, after the runner's exit, ``session.ended`` on another: the
sample could land after the end, and a client reading the ended session saw a peak below the limit that killed it
(``test_limits.py::test_memory_hog_is_killed_with_the_reason_recorded`` failed so in CI: peak 144.7 MiB, limit
150 MiB). Now the sample rides on the note and the supervisor posts it first.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from labd.daemon.limits import Limits
from labd.daemon.monitor import Monitor
from labd.daemon.proctable import read_proc
from labd.daemon.watched import Watched
from tests.unit.test_supervisor_disk_full import _supervisor


class _Socket:
    """Stands in for a PUSH socket: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_pyobj(self, obj: tuple[Any, ...]) -> None:
        self.sent.append(obj)


@pytest.fixture
def hog() -> Iterator[subprocess.Popen[bytes]]:
    """A process of its own group holding 48 MiB it has written to (so its PSS is at least that)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nb = bytearray(48 << 20)\n"
                             "for i in range(0, len(b), 4096): b[i] = 1\nprint('ready', flush=True)\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.timeout(30)
def test_the_breach_note_carries_the_peak_that_broke_the_limit(hog: subprocess.Popen[bytes]) -> None:
    """A tree over its memory limit is killed, and the note to the supervisor holds the sample of that moment: its
    ``peak_rss`` is the measured figure (over the limit). Nothing about the breach goes to ingest on the monitor's
    own socket, where it could overtake or trail the supervisor's events."""
    monitor = Monitor(None, sample_interval=0.1, record_interval=1.0)  # type: ignore[arg-type]  # no thread: no sockets
    monitor.notes, monitor.out = _Socket(), _Socket()  # type: ignore[assignment]
    proc = read_proc(hog.pid)
    assert proc is not None
    limit = 32 << 20
    w = Watched("s1", hog.pid, Limits(memory=limit), started=0.0, members=[proc], peak_memory=20 << 20)
    measured = monitor.memory.check(w, estimate=limit + 1)  # the breach path, on a real process
    assert measured > limit
    assert hog.wait(timeout=10) == -9  # killed
    [note] = monitor.notes.sent  # type: ignore[attr-defined]
    kind, sid, payload, sample, pid = note
    assert pid == hog.pid  # the runner it is about (a resumed session has another)
    assert (kind, sid, payload["limit"], payload["measured"]) == ("limit", "s1", "memory", measured)
    assert sample["peak_rss"] == sample["rss"] == measured
    assert monitor.out.sent == []  # type: ignore[attr-defined]


def test_the_supervisor_posts_the_sample_before_the_breach() -> None:
    """The supervisor posts the note's sample, then ``limit.exceeded``, on its own path to ingest; the daemon's loop
    handles notes before exits (daemon/server.py), so the ``session.ended`` the kill leads to comes after both."""
    sup, launcher, posts = _supervisor()
    sup.pump()
    assert launcher.launched == ["a", "b"]
    posts.clear()
    sample = {"rss": 200, "rss_sum": 210, "cpu_percent": 5.0, "num_procs": 1, "peak_rss": 200, "peak_cpu_percent": 9.0}
    sup.on_note(("limit", "a", {"limit": "memory", "measured": 200, "max": 150, "unit": "bytes", "action": "kill"},
                 sample))
    assert [(sid, kind) for sid, kind, _p in posts] == [("a", "resource.sample"), ("a", "limit.exceeded")]
    assert posts[0][2] == sample


def test_a_vanished_sessions_last_sample_is_posted_even_once_it_ended() -> None:
    """A vanished note's sample is posted whether or not the session is still running (the monitor has stopped
    watching it, so the supervisor's final sample finds nothing); a note without one, or a remote launcher's
    three-part limit note, posts no sample."""
    sup, _launcher, posts = _supervisor()
    sup.pump()
    posts.clear()
    sample = {"rss": 5, "rss_sum": 5, "cpu_percent": 0.0, "num_procs": 1, "peak_rss": 7, "peak_cpu_percent": 1.0}
    sup.on_note(("vanished", "a", None, sample))
    sup.on_note(("vanished", "gone", None, sample))  # not running (any more)
    sup.on_note(("vanished", "b", None, None))
    sup.on_note(("limit", "b", {"limit": "wall time", "measured": 3, "max": 2, "unit": "s", "action": "stop"}))
    assert [(sid, kind) for sid, kind, _p in posts if kind == "resource.sample"] == [("a", "resource.sample"),
                                                                                     ("gone", "resource.sample")]


def test_other_four_part_notes_post_no_sample() -> None:
    """Only limit and vanished notes carry a sample: a budget or record-cap note, four parts too (its figures), posts
    its limit.exceeded and no ``resource.sample``."""
    sup, _launcher, posts = _supervisor()
    sup.pump()
    posts.clear()
    sup.on_note(("budget", "a", 2.5, 2.0))
    sup.on_note(("record", "b", 2000, 1000))
    assert [kind for _sid, kind, _p in posts if kind == "resource.sample"] == []
    assert [(sid, kind) for sid, kind, _p in posts if kind == "limit.exceeded"] == [("a", "limit.exceeded"),
                                                                                  ("b", "limit.exceeded")]


def test_a_session_whose_runner_vanished_counts_as_ending() -> None:
    """Between the monitor finding a runner gone and the supervisor posting its end (``VANISH_CONFIRM_S``), the
    session counts as ending: a ``session.resume`` is then refused ``stopping`` (the SDK and CLI wait for the end and
    continue the ended session) instead of answering "resuming" with a message to a runner that no longer exists."""
    sup, _launcher, _posts = _supervisor()
    sup.pump()
    assert not sup.stopping("a")
    sup.on_note(("vanished", "a", None, None))
    assert sup.stopping("a") and not sup.stopping("b")
