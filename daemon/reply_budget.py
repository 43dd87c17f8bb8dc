"""A global budget of reply bytes the daemon has handed to ZeroMQ and ZeroMQ still holds.

A reply on the control socket (a ROUTER) waits in its client's pipe until the client reads it. A client that holds
the key and never reads (one socket option, a receive high-water mark of 1, keeps its own side from reading) makes
the *daemon* hold its replies: 50 such clients, each asking for the 43 MB DAG of a 300,000-step session, made it
hold ~1.7 GB. The ROUTER's per-peer high-water mark (``SNDHWM``, 1,000 messages) bounds how many messages wait for
a peer, not their bytes.

So a reply of at least :data:`THRESHOLD` bytes is sent zero-copy with a :class:`zmq.MessageTracker`, whose ``done``
turns true once libzmq released the message (written to the kernel, or dropped with its peer), and counted here
until then. The control plane asks :meth:`ReplyBudget.admits` before it sends one, and answers ``busy`` instead while
the bytes held plus the reply would exceed the budget. Nothing is held that way: the reply was already built (and
freed at once), and the client, told how many bytes wait, may ask again.

Replies under :data:`THRESHOLD` are not tracked: most replies are a few hundred bytes, and below pyzmq's own
zero-copy threshold (the same 64 KiB) a tracked send costs more than the copy it saves. They stay bounded by the
high-water mark alone: at most ``SNDHWM`` x 64 KiB (~64 MiB) per connected peer that never reads. That bound is per
peer, and peers are counted only by the daemon's file descriptors: docs/design.md, "Replies held for clients".
"""

from __future__ import annotations

import time
from typing import Any

import zmq

__all__ = ["ReplyBudget", "THRESHOLD", "DEFAULT_BUDGET"]

#: replies of at least this many bytes (a message's body frame) are tracked and counted
THRESHOLD = 64 * 1024
#: the default budget: bytes of tracked replies ZeroMQ may hold at once (``[daemon] max_unread_replies``)
DEFAULT_BUDGET = 256 * 1024 * 1024
#: the loop's tick prunes at most this often (seconds): each reply prunes anyway, the tick only keeps ``in_flight``
#: current for ``daemon.status`` while no large reply is sent
TICK_EVERY = 1.0


class ReplyBudget:
    """The tracked replies ZeroMQ has not released yet, and the budget they are held to.

    Tracked sends are at least :data:`THRESHOLD` bytes each, so at most ``budget / THRESHOLD`` (+ the parts of one
    reply admitted on an empty budget) are pending: pruning scans them all, 4,096 at the default budget."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._pending: list[tuple[zmq.MessageTracker, int]] = []
        self._bytes = 0
        self._pruned_at = 0.0

    @property
    def in_flight(self) -> int:
        """Bytes of tracked replies ZeroMQ held at the last prune (it may have released some since)."""
        return self._bytes

    def __len__(self) -> int:
        """Tracked sends not released yet (at the last prune)."""
        return len(self._pending)

    def prune(self) -> int:
        """Forget the sends ZeroMQ has released; return the bytes still held."""
        if self._pending:
            self._pending = [(t, n) for t, n in self._pending if not t.done]
            self._bytes = sum(n for _, n in self._pending)
        self._pruned_at = time.monotonic()
        return self._bytes

    def tick(self) -> None:
        """On the daemon's loop: prune now and then, so ``in_flight`` falls as clients read."""
        if self._pending and time.monotonic() - self._pruned_at >= TICK_EVERY:
            self.prune()

    def admits(self, size: int) -> bool:
        """May a reply of ``size`` bytes be sent now? Always when nothing is held (one reply larger than the budget,
        but allowed by the reply limits, still goes: refused, it could never be sent); else only within budget."""
        if size < THRESHOLD:
            return True
        held = self.prune()
        return held == 0 or held + size <= self.budget

    def send(self, sock: zmq.Socket, identity: bytes, frames: list[bytes]) -> None:
        """Send ``[identity, *frames]``; a message whose last (body) frame is at least :data:`THRESHOLD` bytes is
        sent zero-copy and counted until ZeroMQ releases it."""
        body = frames[-1]
        if len(body) < THRESHOLD:
            sock.send_multipart([identity, *frames])
            return
        # An explicit Frame: send_multipart(copy=False) would still copy (untracked) a body under pyzmq's
        # copy_threshold, and the tracker of the last frame is the one returned.
        frame: Any = zmq.Frame(body, track=True, copy=False)
        tracker = sock.send_multipart([identity, *frames[:-1], frame], copy=False, track=True)
        assert tracker is not None  # a tracked Frame always yields one
        self._pending.append((tracker, len(body)))
        self._bytes += len(body)
