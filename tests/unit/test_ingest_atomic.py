"""Several daemon events handed over together (``Daemon.post_events``: a branch's sessions) are stored in one
transaction: a daemon killed while it made ``branch --count 5`` left 2 of them (crash review), and the client, told
``no_daemon``, retried and made 5 more. The real ingest thread (tests/support/ingest_rig.py), watching what each
commit holds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from labd.store.writer import BatchWriter
from tests.conftest import wait_until
from tests.support.ingest_rig import Rig


@pytest.fixture()
def rig() -> Iterator[Rig]:
    r = Rig(None)
    yield r
    r.close()


def test_events_handed_over_together_are_committed_together(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five ``session.created`` in one ``events`` item: one commit inserts all five sessions."""
    commits: list[set[str]] = []
    real = BatchWriter.commit

    def watched(self: BatchWriter, rows: Any, changes: Any, *args: Any, **kwargs: Any) -> Any:
        inserted = {row["id"] for row in changes.session_inserts}
        done = real(self, rows, changes, *args, **kwargs)
        commits.append(inserted)  # once committed: the count below read before the commit on a loaded box
        return done

    monkeypatch.setattr(BatchWriter, "commit", watched)
    sids = [f"b{i:011d}" for i in range(5)]
    rig.daemon_side.send_pyobj(("events", [("event", sid, "session.created", {
        "workflow": "demo.events", "name": sid, "params": {}, "limits": {}, "workdir": str(rig.tmp)}, None, None, 1.0)
        for sid in sids]))
    wait_until(lambda: any(commits), timeout=10, what="a commit")
    assert [c for c in commits if c] == [set(sids)]
    with rig.ing.writer.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM sessions").scalar() == 5
