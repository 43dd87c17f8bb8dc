"""HMAC-SHA256 signing of every frame, with replay protection (Jupyter's scheme, tightened).

A message is the pair ``(signature, body)``: ``signature = hex(HMAC-SHA256(key, body))`` and the body
is an encoded envelope carrying a unique ``id`` and a send time ``ts``. A verifier rejects a body whose
signature does not match (``compare_digest``), whose ``ts`` lies outside the replay window, or whose
``id`` it has already seen within that window (a bounded history: ids older than the window are
rejected by their timestamp, so the history never needs to be longer than the window).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import time

__all__ = ["Signer", "ReplayGuard", "SignatureError", "ReplayError", "derive_key", "RUNNER_KEY_CONTEXT"]

#: the label a runner's key is derived under (distinct from any other use of the daemon key)
RUNNER_KEY_CONTEXT = b"labd runner key v1:"


def derive_key(daemon_key: bytes, session_id: str, run: int = 0) -> bytes:
    """The signing key of one run of a session's runner: ``HMAC-SHA256(daemon_key, context + session id)`` for
    its first run, ``HMAC-SHA256(daemon_key, context + session id + "#" + run)`` for a resumed one, where ``run``
    is the ``seq`` of the ``session.continued`` that began the run (:func:`labd.store.attempts.run_starts`).

    A runner holds only this key, never the daemon's: it can sign frames for its own session and for no
    other (the daemon verifies each runner frame with the key of the session it claims), and the key
    tells nothing about the daemon key or other sessions' keys. Each run of a resumed session has a key of
    its own: a key copied out during one run signs nothing in the next. The daemon re-derives it at will from
    the record, so a restarted daemon still verifies runners it did not start."""
    label = RUNNER_KEY_CONTEXT + session_id.encode()
    if run:
        label += b"#%d" % run
    return hmac.new(daemon_key, label, hashlib.sha256).digest()


class SignatureError(Exception):
    """The frame is unsigned or its signature does not match."""


class ReplayError(Exception):
    """The frame was already seen, or is too old / from the future to be checked for replay."""


class Signer:
    """Signs and verifies bodies with one shared key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("signing key must be at least 16 bytes")
        self._key = key

    def sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest().encode()

    def verify(self, signature: bytes, body: bytes) -> None:
        if not signature:
            raise SignatureError("unsigned frame")
        if not hmac.compare_digest(self.sign(body), signature):
            raise SignatureError("bad signature")


class ReplayGuard:
    """Remembers message ids seen within ``window`` seconds; rejects repeats and stale messages.

    Ids are let go in time stamp order (a heap), whatever order they came in: with arrival order, one message
    stamped near the window's far edge kept every id after it for up to twice the window. At most ``max_ids`` are
    kept; past that the oldest go first. ``strict`` (a daemon's control socket): a message stamped at or before an
    id let go for room is refused too (``floor``), so a full guard refuses what it can no longer tell apart from a
    replay instead of taking it; and ``not_before`` (the receiver's start) starts that floor, so a request captured
    before a daemon restarted is not run again by the next daemon, which has seen no ids yet. Without ``strict``
    (runner frames, taken exactly once by their sequence numbers anyway) an id let go for room may come again."""

    def __init__(self, window: float = 300.0, max_ids: int = 1_000_000, *, strict: bool = False,
                 not_before: float | None = None) -> None:
        self.window = window
        self.max_ids = max_ids
        self.strict = strict
        #: a message stamped at or before this is refused (strict guards only)
        self.floor = not_before if strict and not_before is not None else float("-inf")
        self._seen: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []  # heap of (time stamp, id)

    def check(self, msg_id: str, ts: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not msg_id:
            raise ReplayError("message has no id")
        if ts < now - self.window or ts > now + self.window:
            raise ReplayError(f"message timestamp outside the {self.window:.0f}s replay window")
        if ts <= self.floor:
            raise ReplayError("message stamped before what this receiver can tell apart from a replay (it was sent "
                              "before the receiver started, or its id would have been let go)")
        if msg_id in self._seen:
            raise ReplayError("message id already seen (replay)")
        self._seen[msg_id] = ts
        heapq.heappush(self._order, (ts, msg_id))
        self._expire(now)

    def _expire(self, now: float) -> None:
        cutoff = now - self.window
        seen, order = self._seen, self._order
        while order and (order[0][0] < cutoff or len(seen) > self.max_ids):
            ts, msg_id = heapq.heappop(order)
            seen.pop(msg_id, None)
            if self.strict and ts >= cutoff:  # let go for room, not for age: refuse what it cannot tell apart now
                self.floor = max(self.floor, ts)
