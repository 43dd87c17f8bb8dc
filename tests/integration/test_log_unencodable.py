"""Logging never raises into the workflow: a value JSON cannot carry (nested 300 levels) is recorded as a bounded,
marked placeholder; the other fields and the message are kept. An explicit ``ctx.emit`` of such data raises a
clear error instead (the workflow asked for exactly that data to be recorded)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import wait_until

FLOWS = textwrap.dedent('''
    def deep_log(ctx):
        deep = []
        for _ in range(300):
            deep = [deep]
        ctx.log.info("deep value", value=deep, note="kept")
        ctx.log.info("after it")
        try:
            ctx.emit("deep", deep)
        except ValueError as exc:
            print("emit refused:", exc)
        return "went on"
''')


def test_logging_a_300_level_value_records_a_placeholder_and_the_workflow_goes_on(daemon, tmp_path: Path) -> None:
    """ctx.log.info with a value nested 300 levels deep does not raise: the session completes, the log event is
    stored with the value replaced by {"unrecorded": why, "repr": bounded repr} and its other field kept, and the
    next log call is recorded as usual. ctx.emit of the same value raises ValueError (PayloadError) naming why."""
    (tmp_path / "flows.py").write_text(FLOWS)
    with daemon.client() as c:
        sid = c.start(f"{tmp_path / 'flows.py'}:deep_log", params={})
        final = c.wait(sid, timeout=60)
        assert final["status"] == "completed", final
        logs = wait_until(lambda: [e for e in c.events(sid, kinds=["log"])["events"]
                                   if e["payload"]["event"] in ("deep value", "after it")], timeout=10)
        assert [e["payload"]["event"] for e in logs] == ["deep value", "after it"]
        fields = logs[0]["payload"]["fields"]
        assert fields["note"] == "kept"
        value = fields["value"]
        assert set(value) == {"unrecorded", "repr"}
        assert "nested deeper than 255 levels" in value["unrecorded"]
        assert value["repr"].startswith("[[[[") and len(value["repr"]) <= 503
        out = "".join(e["payload"]["text"] for e in c.events(sid, kinds=["output"])["events"])
        assert "emit refused: value nested deeper than 255 levels" in out
        assert not [e for e in c.events(sid, kinds=["custom"])["events"] if e["payload"].get("name") == "deep"]
