"""What ingest keeps per session after the session's end is committed (daemon/delivery.py): nothing.

A daemon runs for weeks; a map keyed by session that is never emptied grows with every session ever run. A soak of
7,000 short sessions found ``last_seen`` (the time of each runner's last frame) kept for all of them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from labd.daemon.delivery import Delivery
from labd.daemon.ingest_batch import Batch


class _Ingest(Delivery):
    """The after-commit half of ingest, with its per-session maps filled as ingest fills them for a live session."""

    def __init__(self, sid: str) -> None:
        forgotten: list[str] = []
        self.forgotten = forgotten
        self.acks = SimpleNamespace(forget=forgotten.append)  # type: ignore[assignment]
        self.records = SimpleNamespace(forget=forgotten.append)  # type: ignore[assignment]
        self.cursors = {sid: object()}  # type: ignore[dict-item]
        self.routes = {sid: b"runner"}
        self.last_seen = {sid: 1.0}
        self.sessions_dir = None
        self._last_resend = {sid: 1.0}
        self._spool_at = {sid: (0, 0, 0)}
        self._gap_at = {sid: 1.0}  # its runner's frames showed a gap (daemon/spool_reading.py _fill_gap)
        self._gap_wait = {sid: 0.2}
        self._runner_codecs = {sid: object()}  # type: ignore[dict-item]
        self.run_seqs = {sid: 7}
        self._waiting_for_hello = {sid: [("pause", {"by": "client"})]}
        self.notify = SimpleNamespace(send_pyobj=lambda note: None)  # type: ignore[assignment]

    def count(self, name: str, n: int = 1) -> None:
        pass

    def _codec_for(self, session_id: str) -> Any:
        raise AssertionError("nothing is sent to an ended session's runner")


def test_an_ended_session_leaves_no_entry_in_ingest() -> None:
    """Once a session's end is committed, ingest holds no entry for it in any per-session map: not its cursor,
    route, codec, run (its key's) or spool position, not the time its runner was last seen (``last_seen``: kept
    for every session ever run before), and not a control message still waiting for its runner's hello (a
    ``pause`` queued for a runner that died before connecting would have been handed to the runner of the session's
    resumed run). A session still running keeps its entries."""
    ingest = _Ingest("s-ended")
    names = ("cursors", "routes", "last_seen", "_last_resend", "_spool_at", "_runner_codecs", "run_seqs",
             "_waiting_for_hello", "_gap_at", "_gap_wait")
    for name in names:
        getattr(ingest, name)["s-live"] = getattr(ingest, name)["s-ended"]
    batch = Batch()
    batch.ended.add("s-ended")
    ingest._send_batch(batch)
    maps = {name: dict(getattr(ingest, name)) for name in names}
    assert {name: sorted(m) for name, m in maps.items()} == {name: ["s-live"] for name in maps}
    assert ingest.forgotten == ["s-ended", "s-ended"]  # the ack pacer's and the record caps' state too
