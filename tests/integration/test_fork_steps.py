"""A child the workflow forks inside an open step leaves that step to the process that opened it: the child's exit
from the ``with`` block writes no checkpoint and finishes nothing, so a resume runs the parent's step again when the
parent's run of it failed (before, the child's checkpoint made the resume skip it with the child's result)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import module_home, running_daemon
from tests.integration.stuck import wait_explained


@pytest.fixture(scope="module")
def shared() -> Iterator[Any]:
    """One daemon for the module (each test runs its own session)."""
    with module_home("lforkstep") as (base, _env), running_daemon(base / "home") as d, d.client() as c:
        yield c


@pytest.mark.parametrize("child_raises", [False, True], ids=["child-leaves", "child-raises"])
def test_a_child_leaving_its_parents_open_step_neither_checkpoints_nor_finishes_it(shared, tmp_path: Path,
                                                                                  child_raises: bool) -> None:
    """A child forked inside step ``a`` leaves the block (normally, having set ``node.result = "CHILD-RESULT"``, or
    raising) while the parent fails step ``a``: the session fails with no checkpoint at all and one
    ``step.finished`` (failed) for ``a``. Resumed with the parent's condition met, step ``a`` runs again (not
    skipped), and the session completes with ``PARENT-RESULT``. Every step node has exactly one ``step.finished``
    (the parent's), no checkpoint holds the child's result, and the child's event after the block is attributed to
    no step (it left the parent's step)."""
    c = shared
    marker = tmp_path / "marker"
    sid = c.start("labd_forkflows:fork_in_open_step", params={"marker": str(marker), "child_raises": child_raises})
    first = wait_explained(c, sid, timeout=60)
    assert first["status"] == "failed", first
    assert not list(c.history(sid, kinds=["step.checkpoint"]))
    finished = [(e["node_id"], e["payload"]["status"]) for e in c.history(sid, kinds=["step.finished"])]
    (a1,) = [e["node_id"] for e in c.history(sid, kinds=["step.started"]) if e["payload"]["name"] == "a"]
    assert finished == [(a1, "failed")]

    marker.touch()
    c.resume(sid, reason="the parent's condition is met now")
    final = wait_explained(c, sid, timeout=60)
    assert final["status"] == "completed", final
    events = list(c.history(sid))
    ends = [e["payload"] for e in events if e["kind"] == "session.finished"]
    assert ends[-1]["result"] == "PARENT-RESULT"
    started = {e["node_id"]: e["payload"]["name"] for e in events if e["kind"] == "step.started"}
    a_nodes = [node for node, name in started.items() if name == "a"]
    assert len(a_nodes) == 2 and a_nodes[0] == a1  # step a ran again on resume: not skipped as completed
    finished = [(e["node_id"], e["payload"]["status"]) for e in events if e["kind"] == "step.finished"]
    assert sorted(node for node, _ in finished) == sorted(started)  # one step.finished per node: the opener's
    assert [status for node, status in finished if node in a_nodes] == ["failed", "completed"]
    checkpoints = {e["node_id"]: e["payload"] for e in events if e["kind"] == "step.checkpoint"}
    assert set(checkpoints) == {node for node, status in finished if status == "completed"}
    assert "PARENT-RESULT" in str(checkpoints[a_nodes[1]].get("result_preview"))
    assert "CHILD-RESULT" not in str(checkpoints)
    left = [e for e in events if e["kind"] == "custom" and e["payload"]["name"] == "child left step a"]
    assert [e["node_id"] for e in left] == ([] if child_raises else [None, None])
