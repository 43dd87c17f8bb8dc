"""A keyed ``session.branch`` whose commit the writer refuses is no longer "in flight": before, its key stayed marked
for up to 300 s, and a retry meanwhile waited 60 s for a commit that would never come and was then told ``busy``."""

from __future__ import annotations

import os
import time
from typing import Any

from labd.daemon.api.base import ApiError
from labd.daemon.api.branch_keys import InFlight, wait_for_first
from labd.daemon.control import ControlPlane
from labd.ipc.wire import Codec
from tests.unit.test_reply_unencodable import _Held


class _NoKeys:
    """A store that has no branch committed with any key (what a refused commit leaves)."""

    def idempotent_start(self, key: str, now: float) -> None:
        return None


def _plane(in_flight: InFlight) -> ControlPlane:
    plane = ControlPlane.__new__(ControlPlane)
    plane.codec, plane.counters, plane._parts_ok, plane.replies_held = Codec(os.urandom(32)), {}, {}, _Held()
    plane.idempotent_starts, plane.idempotent_requests, plane.idempotent_waiters = {}, {}, {}
    plane._deferred, plane.branches_in_flight = {"req-1": lambda *_: {}}, in_flight
    return plane


def test_a_branch_the_writer_refused_lets_its_retry_make_the_branches_at_once() -> None:
    """The writer's refusal of the branch's request (``_refuse``, what a ``refused`` note from ingest calls) takes its
    key out of flight: a retry's wait returns at once with nothing made (the retry then makes the branches itself),
    the refused request is answered with the writer's error, and another request's refusal leaves other keys be."""
    in_flight = InFlight()
    in_flight.note("K", "req-1")
    in_flight.note("L", "req-2")
    plane = _plane(in_flight)
    plane._refuse(None, b"client", "req-1", ApiError("store_error", "the store refused this change"))  # type: ignore[arg-type]
    assert not in_flight.busy("K") and in_flight.busy("L")
    started = time.monotonic()
    assert wait_for_first(_NoKeys(), "K", "digest", in_flight) is None
    assert time.monotonic() - started < 5  # it had waited FIRST_WAIT_S (60 s), then raised busy
    [frames] = plane.replies_held.sent  # type: ignore[attr-defined]
    body: Any = plane.codec.unpack(frames).body
    assert body["ok"] is False and body["error"]["code"] == "store_error"
    assert "req-1" not in plane._deferred


def test_a_key_still_being_made_keeps_its_retry_waiting_and_a_committed_one_is_done() -> None:
    """Without a refusal the key stays in flight (a retry waits for the first attempt's commit), and ``done`` (the
    commit's answer) ends it; a refusal of a request that made no branch changes nothing."""
    in_flight = InFlight()
    in_flight.note("K", "req-1")
    in_flight.refused("req-9")
    assert in_flight.busy("K")
    in_flight.done("K")
    assert not in_flight.busy("K")
