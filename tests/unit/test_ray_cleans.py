"""The Ray launcher's bookkeeping for two things a Ray review asked for, with a stand-in driver process (no cluster):
deleted sessions' node directories are asked of a *connected* driver (they waited in an outbox that a failed start
emptied), and, when the cluster stops answering, only the sessions Ray had not placed *and* whose runner never called
the daemon end ``failed`` (a runner that called is alive on some node and waits like a placed one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from labd.daemon.ray_adopt import Adoption
from labd.daemon.ray_launcher import RayLauncher
from tests.conftest import wait_until

RECORDER = """
import sys
print('{"op": "loaded"}', flush=True)
print('{"op": "ready"}', flush=True)
with open(sys.argv[1], "a") as out:
    for line in sys.stdin:
        out.write(line)
        out.flush()
"""


def _launcher(tmp_path: Path) -> RayLauncher:
    launcher = RayLauncher(tmp_path, f"ipc://{tmp_path}/runners", 1 << 20,
                           {"kind": "ray", "address": "127.0.0.1:1", "runner_listen": "tcp://127.0.0.1:0"},
                           timeout=30.0)
    launcher.link.command = [sys.executable, "-c", RECORDER, str(tmp_path / "stdin.jsonl")]
    return launcher


def _received(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "stdin.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [m for m in map(json.loads, lines) if m["op"] == "clean"]  # not the periodic sweep


def test_removals_wait_for_a_connected_driver_then_go_in_order(tmp_path: Path) -> None:
    """Asked while no driver runs, the removals are kept (none sent, none lost); once a driver is connected the
    launcher's pump sends each as a ``clean`` request, in order, and keeps none."""
    ray = _launcher(tmp_path)
    placed = [("0123456789ab", "node-a", "/n/0123456789ab/work"), ("ba9876543210", "node-b", "/n/ba9876543210/work")]
    ray.clean_nodes(placed)
    assert len(ray.cleanups.waiting) == 2 and not _received(tmp_path)
    ray.start()
    try:
        wait_until(lambda: (ray.drain_exits(), len(_received(tmp_path)) == 2)[1], timeout=30, interval=0.05,
                   what="the removals sent to the connected driver")
        assert [(m["op"], m["sid"], m["node"], m["workdir"]) for m in _received(tmp_path)] == \
            [("clean", *p) for p in placed]
        assert not ray.cleanups.waiting
    finally:
        ray.shutdown()


def test_when_the_cluster_stops_answering_only_unplaced_sessions_never_heard_from_fail(tmp_path: Path) -> None:
    """Three sessions whose driver ended: one placed, one not placed, one not placed as far as the launcher knows but
    whose runner has called the daemon (placed meanwhile). When the next driver cannot connect, only the second ends,
    ``failed``, saying Ray had not placed it and which cluster stopped answering; the others wait for the cluster."""
    ray = _launcher(tmp_path)
    for handle, sid in ((-1, "aaaaaaaaaaaa"), (-2, "bbbbbbbbbbbb"), (-3, "cccccccccccc")):
        ray._sid[handle] = sid
    ray._adopt[-1] = Adoption(why="driver ended", unplaced=False)
    ray._adopt[-2] = Adoption(why="driver ended", unplaced=True)
    ray._adopt[-3] = Adoption(why="driver ended", unplaced=True)
    ray.gateway.heard.add("cccccccccccc")
    ray._driver_failed("the Ray driver did not connect within 60 s")
    [info] = ray._exits
    assert info.pid == -2 and info.failed is not None
    assert "Ray had not placed the session's actor" in info.failed and "127.0.0.1:1" in info.failed
    assert "did not connect within 60 s" in info.failed
    assert sorted(ray._adopt) == [-3, -1] and "bbbbbbbbbbbb" not in ray._sid.values()
