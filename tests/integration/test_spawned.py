"""Processes a workflow starts with multiprocessing's ``spawn`` and ``forkserver`` methods (new interpreters, nothing
inherited from the runner's memory) get the session's context: ``labd.context()`` answers there, their steps,
custom events and agents' LLM calls are recorded through the runner like a forked child's (runner/spawned.py), the
session's secrets reach their context but not their environment, and what cannot reach them (an approval's
answer, a resume) fails at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import module_home, running_daemon
from tests.integration.stuck import wait_explained
from tests.support.labd_forkflows import SPAWN_SECRET


@pytest.fixture(scope="module")
def shared() -> Iterator[Any]:
    """One daemon for the module (each test runs its own session), with a secret in its environment."""
    with module_home("lspawn") as (base, env), \
            running_daemon(base / "home", extra_env={"FAKE_API_KEY": SPAWN_SECRET}) as d, d.client() as c:
        yield c


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_workers_have_the_context_and_their_agents_are_recorded(shared: Any, method: str) -> None:
    """A Pool of 2 ``method`` workers runs 4 tasks, each a step with a custom event, an agent turn through
    ``ctx.agent`` and one by a plain ``ag2.Agent`` (offline model): every task had its context and the session's
    secret (not in its environment); each step nests under the step that fanned out and has ids of a child
    (``f<j>.<i>``); the custom events are attributed to their steps; both agents' LLM requests and responses are
    recorded, each response linked to its request; the runner's ``src_seq`` stays gap-free."""
    tasks = 4
    sid = shared.start("labd_forkflows:spawned_agents", params={"method": method, "tasks": tasks})
    final = wait_explained(shared, sid, timeout=180)
    assert final["status"] == "completed", final["reason"]
    events = list(shared.history(sid))
    result = next(e for e in events if e["kind"] == "session.finished")["payload"]["result"]
    assert [r["i"] for r in result] == list(range(tasks))
    assert all(r["answered"] and r["secret"] and not r["in_env"] for r in result), result
    runner = [e for e in events if e["src"] == "runner"]
    assert [e["src_seq"] for e in runner] == list(range(1, len(runner) + 1))
    steps = {e["payload"]["name"]: e for e in events if e["kind"] == "step.started"}
    fan_out = steps["fan out"]["node_id"]
    worker_nodes = {steps[f"worker {i}"]["node_id"] for i in range(tasks)}
    for i in range(tasks):
        step = steps[f"worker {i}"]
        assert step["payload"]["parent_node"] == fan_out and step["node_id"].startswith("f"), step
    assert len(worker_nodes) == tasks  # unique across the workers
    custom = [e for e in events if e["kind"] == "custom"]
    assert sorted(e["payload"]["data"]["i"] for e in custom) == list(range(tasks))
    assert {e["node_id"] for e in custom} == worker_nodes
    by_src = {e["src_seq"]: e for e in runner}
    requests = [e for e in events if e["kind"] == "llm.request"]
    responses = [e for e in events if e["kind"] == "llm.response"]
    assert len(requests) == len(responses) == 2 * tasks
    assert sorted(e["payload"]["agent"] for e in requests) == sorted(
        [f"agent{i}" for i in range(tasks)] + [f"plain{i}" for i in range(tasks)])
    for resp in responses:
        assert by_src[resp["parent"]]["kind"] == "llm.request"
        assert by_src[resp["parent"]]["payload"]["agent"] == resp["payload"]["agent"]


def test_a_spawned_worker_asking_for_an_approval_or_to_pause_gets_an_error_at_once(shared: Any) -> None:
    """No answer or resume could reach a spawned worker: asking for an approval and pausing raise at once with a
    reason (not a wait for ever, nor "only available inside a labd session"), and the session completes."""
    sid = shared.start("labd_forkflows:spawned_asks")
    final = wait_explained(shared, sid, timeout=120)
    assert final["status"] == "completed", final["reason"]
    result = next(e for e in shared.history(sid) if e["kind"] == "session.finished")["payload"]["result"]
    assert "approval cannot be asked" in result[0], result
    assert "cannot pause" in result[1], result


def test_spawned_and_forked_processes_never_share_node_ids(shared: Any) -> None:
    """The runner forks a child that runs a step and starts a spawn worker; the runner starts one too; each worker
    runs a step and forks a process that runs another. All five steps are recorded, each with a node id of its own
    (a worker spawned from a forked child used to get the same ids as the forked child itself, and a worker's
    own forks the worker's), nested where they ran."""
    sid = shared.start("labd_forkflows:forks_and_spawns")
    final = wait_explained(shared, sid, timeout=180)
    assert final["status"] == "completed", final["reason"]
    started = [e for e in shared.history(sid) if e["kind"] == "step.started"]
    names = sorted(e["payload"]["name"] for e in started)
    assert names == sorted(["forked", "spawned from the fork", "spawned from the fork fork",
                            "spawned from the runner", "spawned from the runner fork"]), names
    ids = [e["node_id"] for e in started]
    assert len(set(ids)) == len(ids), ids
    by_name = {e["payload"]["name"]: e["node_id"] for e in started}
    assert by_name["spawned from the fork"].startswith(by_name["forked"].rsplit(".", 1)[0] + ".f"), by_name
