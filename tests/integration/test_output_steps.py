"""Output belongs to the step that printed it, also when a step ends without a newline: a partial line, and a tail
the capture held back as the possible start of a secret, leave before the step's end is recorded (a step boundary
asks the capture for what it keeps back, OutputCapture.sync), not 0.1 s / 1 s later in whatever step runs then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import running_daemon

KEY = "sk-leak-Z9q8w7e6r5t4"
M = "[secret FAKE_API_KEY withheld]"


def _by_step(events: list[dict[str, Any]]) -> dict[str | None, dict[str, str]]:
    """Each step's output, per stream, with the step's name as the key (None: outside any step); checks on the way
    that no output of a step comes after its end."""
    names = {e["node_id"]: e["payload"]["name"] for e in events if e["kind"] == "step.started"}
    ended: set[str] = set()
    out: dict[str | None, dict[str, str]] = {}
    for e in events:
        if e["kind"] == "step.finished":
            ended.add(e["node_id"])
        elif e["kind"] == "output":
            assert e["node_id"] not in ended, f"output after its step ended: {e}"
            per = out.setdefault(names.get(e["node_id"]), {})
            per[e["payload"]["stream"]] = per.get(e["payload"]["stream"], "") + e["payload"]["text"]
    return out


def test_a_partial_line_at_a_step_end_is_recorded_in_that_step(isolated_env: Path) -> None:
    """A step that ends with ``print(..., end="")`` on stdout and stderr: both pieces are recorded in that step,
    before its end, and the next step's output in the next step (before the fix they left 0.1 s after the step
    ended, outside any step)."""
    with running_daemon(isolated_env) as d, d.client() as c:
        sid = c.start("labd_testflows:partial_at_step_end")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        steps = _by_step(list(c.history(sid)))
    assert steps["one"] == {"stdout": "progress 50%", "stderr": "warming up"}, steps
    assert steps["two"] == {"stdout": "step two line\ndone 100%"}, steps
    assert None not in steps, steps


def test_a_held_start_of_a_secret_at_a_step_end_is_recorded_in_that_step_and_the_rest_withheld(
        isolated_env: Path) -> None:
    """A step ends with the first characters of the session's API key (held back: they may start it) and the next
    step prints the rest. The held text is recorded in the step that printed it: 5 characters as they are (under
    8, too short to be taken for the key), 10 as the key's mark; the rest is withheld in the next step, and no 8
    characters of the key in a row reach the record."""
    with running_daemon(isolated_env, extra_env={"FAKE_API_KEY": KEY}) as d, d.client() as c:
        sid = c.start("labd_withholdflows:key_across_steps")
        assert c.wait(sid, timeout=60)["status"] == "completed"
        events = list(c.history(sid))
    steps = _by_step(events)
    assert steps["start-5"] == {"stdout": f"S5 {KEY[:5]}"}, steps
    assert steps["rest-5"] == {"stdout": f"{M} R5\n"}, steps
    assert steps["start-10"] == {"stdout": f"S10 {M}"}, steps
    assert steps["rest-10"] == {"stdout": f"{M} R10\n"}, steps
    runs = [KEY[i:i + 8] for i in range(len(KEY) - 7)]
    assert not [r for r in runs if r in repr(events)]
