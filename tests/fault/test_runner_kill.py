"""A SIGKILLed runner loses nothing it had emitted: the daemon ingests its spool before ending it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import DaemonProc, wait_until
from tests.fault.conftest import figures

pytestmark = pytest.mark.fault


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_right_after_interleaved_prints_and_emits_loses_nothing(daemon: DaemonProc, round_: int) -> None:
    """300 prints interleaved with 300 ctx.emit calls, a step boundary, then SIGKILL of the runner the
    moment its marker file appears: every line and every tick is in the store exactly once, and the
    session ends failed (killed by SIGKILL) after them."""
    n = 300
    with daemon.client() as c:
        sid = c.start("tests.fault.faultflows:interleaved", params={"n": n})
        row = wait_until(lambda: (s := c.session(sid))["pid"] and s, timeout=30, what="runner pid")
        marker = Path(row["workdir"]) / "emitted.marker"
        wait_until(marker.exists, timeout=60, interval=0.001, what="marker")
        os.killpg(row["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        final = c.wait(sid, timeout=60)
        ended_s = time.monotonic() - t0
        events = list(c.history(sid))
    ticks = [e["payload"]["data"]["i"] for e in events if e["kind"] == "custom" and e["payload"]["name"] == "tick"]
    text = "".join(e["payload"]["text"] for e in events if e["kind"] == "output")
    lines = text.splitlines()
    runner_seqs = [e["src_seq"] for e in events if e["src"] == "runner"]  # the record names the runner "runner"
    figures("runner SIGKILL", round=round_, ticks=len(ticks), lines=len(lines), events=len(events),
            kill_to_ended_ms=round(ended_s * 1000))
    assert final["status"] == "failed" and final["signal"] == signal.SIGKILL, final
    assert ticks == list(range(n)), f"{n - len(ticks)} ticks lost"
    assert lines == [f"line {i}" for i in range(n)], f"{n - len(lines)} lines lost"
    assert len(runner_seqs) > n, f"only {len(runner_seqs)} runner events"  # the ticks alone are n
    assert runner_seqs == list(range(1, len(runner_seqs) + 1)), "runner events not exactly once, in order"
    assert events[-1]["kind"] == "session.ended", "events recorded after the session's end"
    assert not (Path(row["workdir"]).parent / "events.spool").exists(), "spool not removed after ingest"
