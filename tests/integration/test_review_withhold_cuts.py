"""A secret in text the runner cuts short to fit an event field is never recorded in part: a real daemon and session
(labd.runner.withhold.head_cut, used by labd.runner.context.clip)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import running_daemon

KEY = "sk-cut-Q1w2E3r4T5y6U7i8O9p0"


def test_a_secret_across_the_cut_of_a_step_name_or_error_is_not_recorded_in_part(isolated_env: Path) -> None:
    """A step name of over 1000 characters and a step error of over 10,000, each with the session's secret across
    the cut, were cut inside the secret: the piece kept (all of it but its last character) was not the whole value the
    channel looks for and reached the store as it was. The cut now falls before the secret; no piece of it is
    stored, and each field still says how much was cut."""
    with running_daemon(isolated_env, extra_env={"FAKE_API_KEY": KEY}) as d, d.client() as c:
        sid = c.start("labd_review_flows:secret_across_cuts")
        final = c.wait(sid, timeout=60)
        assert final["status"] == "completed", final
        events = list(c.history(sid))
    text = repr(events)
    assert KEY[:12] not in text, [e["payload"] for e in events if e["kind"].startswith("step.")][:2]
    names = [e["payload"]["name"] for e in events if e["kind"] == "step.started"]
    assert names[0].startswith("nnnn") and names[0].endswith(f"… ({len(KEY)} more)"), names[0][-60:]
    errors = [e["payload"].get("error") for e in events if e["kind"] == "step.finished" and e["payload"].get("error")]
    assert errors and errors[0].endswith(f"… ({len(KEY)} more)"), [x[-60:] for x in errors]
    db = b"".join(p.read_bytes() for p in isolated_env.glob("labd.db*"))
    assert KEY[:12].encode() not in db
