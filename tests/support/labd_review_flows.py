"""Workflows for tests/integration/test_review_withhold_cuts.py: a session's secret in text the runner cuts short to
fit a field (a step name over 1000 characters, a step error over 10,000)."""

from __future__ import annotations

from labd.runner.context import MAX_STEP_ERROR, MAX_STEP_NAME


def secret_across_cuts(ctx) -> str:
    """A step whose name holds FAKE_API_KEY across the 1000-character cut (all of it but its last character inside),
    and a step that fails with an error holding the key across the 10,000-character cut."""
    key = ctx.secret("FAKE_API_KEY") or ""
    with ctx.step("n" * (MAX_STEP_NAME - len(key) + 1) + key):
        pass
    try:
        with ctx.step("fails"):
            raise RuntimeError("e" * (MAX_STEP_ERROR - len(key) - len("RuntimeError: ") + 1) + key)
    except RuntimeError:
        pass
    return "done"
