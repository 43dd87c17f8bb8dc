"""The budget of reply bytes ZeroMQ holds for clients (daemon/reply_budget.py), on a real ROUTER/DEALER pair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from labd.daemon.reply_budget import THRESHOLD, ReplyBudget
from tests.conftest import wait_until

MIB = 1024 * 1024


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[zmq.Socket, zmq.Socket, bytes]]:
    """A ROUTER (the daemon's control socket) and a DEALER that takes in at most one message on its side (receive
    high-water mark 1, a small kernel buffer): what it does not read stays with the ROUTER. Yields both and the
    DEALER's routing id."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.setsockopt(zmq.RCVBUF, 4096)
    endpoint = f"ipc://{tmp_path}/control"
    router.bind(endpoint)
    dealer.connect(endpoint)
    dealer.send(b"hello")
    assert router.poll(5000)
    identity = router.recv_multipart()[0]
    try:
        yield router, dealer, identity
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def _send_unread(budget: ReplyBudget, router: zmq.Socket, identity: bytes, count: int) -> None:
    for i in range(count):
        budget.send(router, identity, [b"signature", bytes([i]) * MIB])


def test_unread_replies_are_counted_until_the_client_reads_them(pair) -> None:
    """Replies of 1 MiB a client does not read stay counted in ``in_flight`` (most are held in the ROUTER's pipe, a
    few in kernel buffers); large ones over the budget are not admitted while they are held; once the client reads
    them all, ZeroMQ releases them and ``in_flight`` falls to 0 (pruned on the daemon's tick too)."""
    router, dealer, identity = pair
    budget = ReplyBudget(budget=4 * MIB)
    _send_unread(budget, router, identity, 8)
    assert budget.in_flight == 8 * MIB and len(budget) == 8
    assert dealer.poll(5000)  # the first reply reached the client's side: ZeroMQ is writing, the rest stays held
    assert budget.prune() >= 5 * MIB, budget.in_flight
    assert not budget.admits(MIB)
    assert budget.admits(THRESHOLD - 1)  # small replies are not the budget's: the high-water mark bounds them
    got = []
    while len(got) < 8:
        assert dealer.poll(5000), f"only {len(got)} replies arrived"
        got.append(dealer.recv_multipart()[-1])
    assert [(g[0], len(g)) for g in got] == [(i, MIB) for i in range(8)]
    # the daemon's loop calls tick(): it prunes (at most every TICK_EVERY s), so in_flight falls without a send
    wait_until(lambda: budget.tick() or budget.in_flight == 0, timeout=5, interval=0.05,
               what="the replies released, seen on the tick")
    assert len(budget) == 0 and budget.admits(6 * MIB)  # nothing held: even one reply over the budget goes


def test_replies_to_a_client_that_went_away_are_released(pair) -> None:
    """A client that closes its socket without reading: ZeroMQ drops what it held for that peer, and the bytes
    leave ``in_flight``."""
    router, dealer, identity = pair
    budget = ReplyBudget(budget=4 * MIB)
    _send_unread(budget, router, identity, 8)
    assert dealer.poll(5000)
    assert budget.prune() >= 5 * MIB
    dealer.close(0)

    def released() -> bool:
        # the ROUTER lets go of a gone peer's pipe when its own thread processes ZeroMQ's commands, which any call
        # on it does: the daemon's loop polls its control socket all the time
        router.getsockopt(zmq.EVENTS)
        return budget.prune() == 0

    wait_until(released, timeout=5, what="the replies dropped with their peer")


def test_a_reply_under_the_threshold_is_sent_untracked(pair) -> None:
    """Small replies go as before (copied, not counted); a large one is counted even before anything is held."""
    router, dealer, identity = pair
    budget = ReplyBudget(budget=4 * MIB)
    budget.send(router, identity, [b"signature", b"x" * (THRESHOLD - 1)])
    assert budget.in_flight == 0 and len(budget) == 0
    assert dealer.poll(5000) and len(dealer.recv_multipart()[-1]) == THRESHOLD - 1
    budget.send(router, identity, [b"signature", b"y" * THRESHOLD])
    assert budget.in_flight == THRESHOLD
    assert dealer.poll(5000) and dealer.recv_multipart()[-1] == b"y" * THRESHOLD
    wait_until(lambda: budget.prune() == 0, timeout=5, what="the read reply released")
