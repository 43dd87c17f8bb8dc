"""A branch racing the deletion of its parent: whichever wins, the answers say what happened."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)


def _outcome(fn: Any) -> str:
    from labd.ipc import LabdError

    try:
        fn()
    except LabdError as exc:
        return exc.code
    return "ok"


def _race(daemon: Any, sid: str, delay: float) -> tuple[str, str]:
    """Branch ``sid`` from n3 (3 copies) and rm it at once (the rm ``delay`` seconds later): both outcomes."""
    results: dict[str, str] = {}
    go = threading.Barrier(2)

    def branch() -> None:
        with daemon.client() as c1:
            go.wait()
            results["branch"] = _outcome(lambda: c1.branch(sid, "n3", count=3))

    def rm() -> None:
        with daemon.client() as c2:
            go.wait()
            threading.Event().wait(delay)  # a few offsets into the branch's reads
            results["rm"] = _outcome(lambda: c2.rm(sid))

    threads = [threading.Thread(target=branch), threading.Thread(target=rm)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results["branch"], results["rm"]


def test_a_branch_racing_rm_of_its_parent_succeeds_or_answers_not_found(shared_daemon) -> None:
    """``labd branch`` and ``labd rm`` of the same parent sent at once: the branch either goes ahead (from a record
    read before the deletion) or answers ``not_found``, never ``unknown_node``/``no_checkpoint`` as if the step
    named did not exist or the request were at fault (an attack review saw both while the parent's rows and
    checkpoint files vanished under the branch's reads). Races at several offsets, both orders."""
    daemon = shared_daemon
    with daemon.client() as c:
        parents = [c.start("demo.count", params={"n": 3}) for _ in range(8)]
        for sid in parents:
            wait_until(lambda s=sid: c.session(s)["status"] == "completed", timeout=60, what=f"{sid} completed")
    seen = [_race(daemon, sid, 0.002 * i) for i, sid in enumerate(parents)]
    assert all(b in ("ok", "not_found") for b, _ in seen), seen
    assert all(r in ("ok", "not_found") for _, r in seen), seen
    with daemon.client() as c:  # every parent is gone, whichever request won
        for sid in parents:
            assert _outcome(lambda s=sid: c.session(s)) == "not_found"
