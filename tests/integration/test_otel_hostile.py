"""OpenTelemetry export against a session that records hostile numbers: a ``code.execution`` whose duration is
``1e10`` s (the longest ingest takes; 1e300 was taken until 2026-12-05), past what int64 nanoseconds hold, must not
stop the export of that session's other spans, nor of any session after it (it did: ``int(start * 1e9)`` raised,
the pass was retried for ever)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import running_daemon, wait_until
from tests.integration.test_otel import Receiver, _config, _expected, _got

pytestmark = pytest.mark.timeout(240)

# ctx._emit is how a session's own code can record any event kind; no public API emits a code.execution with a
# chosen duration (run_code measures its own), which is why this test reaches for it.
FLOWS = '''
def hostile(ctx):
    with ctx.step("emit") as node:
        ctx._emit("code.execution", {"agent": "engineer", "language": "python", "code": "x = 1", "exit_code": 2**63,
                                     "output": "", "duration": 1e10}, node.id)
    return "done"
'''


def test_a_hostile_code_execution_is_clamped_and_later_sessions_are_exported(isolated_env: Path,
                                                                             tmp_path: Path) -> None:
    """The hostile session's spans all arrive (its run_code span clamped to zero length at the event's time,
    marked labd.time.clamped, exit code attribute -1 as it does not fit int64); three sessions started after it
    are exported completely; the exporter records no failure and reports skipped_spans in daemon.status."""
    flows = tmp_path / "hostileflows.py"
    flows.write_text(FLOWS)
    rx = Receiver()
    _config(isolated_env, rx.port)
    try:
        with running_daemon(isolated_env) as d, d.client() as c:
            bad = c.start(f"{flows}:hostile")
            assert c.wait(bad, timeout=90)["status"] == "completed"
            later = [c.start("demo.count", params={"n": 1}) for _ in range(3)]
            for sid in later:
                assert c.wait(sid, timeout=90)["status"] == "completed"
            want = {sid: _expected(c, sid) for sid in [bad, *later]}
            assert want[bad]["code"] == 1
            wait_until(lambda: all(_got(rx.of(s)) == want[s] for s in want), timeout=60,
                       what="every session's spans, the hostile one's included")
            # the exporter counts a batch once the collector answered it: after the spans arrived here
            total = sum(sum(w.values()) for w in want.values())
            telemetry = wait_until(lambda: (lambda t: t if t["exported_spans"] >= total else None)(
                c.status()["telemetry"]), timeout=30, what="the exporter's count to include every span")
            assert d.stop() == 0, d.log()[-2000:]
        (code,) = [s for s in rx.of(bad) if s["name"] == "run_code"]
        assert code["start"] == code["end"] > 0 and code["attrs"]["labd.time.clamped"] is True
        assert code["attrs"]["labd.code.exit_code"] == -1
        assert telemetry["failures"] == 0 and telemetry["skipped_spans"] == 0
        assert len({s["id"] for s in rx.spans}) == len(rx.spans)  # none twice
    finally:
        rx.close()
