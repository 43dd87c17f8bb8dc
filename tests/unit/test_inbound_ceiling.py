"""The daemon's memory ceiling (daemon/inbound.py): when a reset of its inbound sockets is due."""

from __future__ import annotations

import mmap

from labd.daemon.inbound import COOLDOWN_MAX_S, Ceiling, resident_bytes


def test_a_reset_is_due_over_the_limit_and_waits_for_the_cooldown_unless_memory_grows_again() -> None:
    """Over the limit a reset is due; within the cooldown another is due only if the memory grew again by a quarter
    of the limit over the lowest it fell to (a flooder reconnecting at once: before, the daemon was unprotected for
    30 s after every reset), not while it merely stays high; memory is read at most every ``every`` seconds; no
    limit or an unreadable figure never resets."""
    rss = [100]
    c = Ceiling(1000, every=0.5, cooldown=30.0, read=lambda: rss[0])
    assert not c.due(0.0)
    rss[0] = 2000
    assert not c.due(0.2)  # read at most every 0.5 s
    assert c.due(0.6) and c.resets == 1 and c.last_rss == 2000 and not c.futile
    rss[0] = 300  # the reset freed it
    assert not c.due(1.2)
    rss[0] = 1200  # the flooder came back: 900 above the low, more than a quarter of the limit
    assert c.due(1.8) and c.resets == 2 and not c.futile  # cut off again within the cooldown
    rss[0] = 1100  # stays high without growing: waits for the cooldown
    assert not c.due(2.4) and not c.due(31.0)
    rss[0] = 100
    assert not c.due(62.0)
    assert not Ceiling(None, read=lambda: 10**12).due(1.0)
    assert not Ceiling(1000, read=lambda: None).due(1.0)


def test_a_reset_that_frees_too_little_backs_off_and_says_so() -> None:
    """A daemon that stays above its ceiling after a reset (something other than connections holds the memory, or
    the ceiling is set too low) is reset again only after the cooldown, doubled each time up to COOLDOWN_MAX_S, and
    the reset says it was futile (the daemon logs an error)."""
    rss = [5000]
    c = Ceiling(1000, every=0.1, cooldown=30.0, read=lambda: rss[0])
    assert c.due(0.0) and c.cooldown == 30.0
    assert not c.due(29.0)
    assert c.due(30.1) and c.futile and c.cooldown == 60.0
    assert not c.due(89.0)
    assert c.due(90.2) and c.futile and c.cooldown == 120.0
    rss[0] = 500  # it came down: the next reset, if any, is an ordinary one
    assert not c.due(300.0)
    rss[0] = 5000
    assert c.due(400.0) and not c.futile and c.cooldown == 30.0
    for t in range(1, 10):
        c.due(400.0 + t * 10_000)
    assert c.cooldown == COOLDOWN_MAX_S


def test_resident_bytes_reads_this_process() -> None:
    """The figure is this process's RSS: a few MiB at least, and it grows by what is touched."""
    before = resident_bytes()
    assert before is not None and before > 4 << 20
    block = mmap.mmap(-1, 64 << 20)  # fresh pages (a heap may reuse pages already resident)
    block.write(b"\1" * (64 << 20))
    after = resident_bytes()
    assert after is not None and after > before + (48 << 20)
    block.close()


def test_a_reset_is_settled_only_once_done_and_one_asked_meanwhile_is_done_again() -> None:
    """``TcpRebind.settled``: false from a reset's request until the owner's thread has closed the old socket and
    bound a new one; a reset asked while one is being done stays due, and settles only after it is done too.
    (``remote.remove`` answers on it: a client acting right after the answer met the old socket, closed under its
    request, and got no reply: a CI run.)"""
    import socket as _socket

    import zmq

    from labd.daemon.inbound import TcpRebind

    probe = _socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ctx = zmq.Context()
    poller = zmq.Poller()
    endpoint = f"tcp://127.0.0.1:{port}"
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    poller.register(sock, zmq.POLLIN)
    rebind = TcpRebind()
    try:
        assert rebind.settled(0) and not rebind.due()
        rebind.request()
        assert rebind.due() and not rebind.settled(0.05)

        def make() -> zmq.Socket:
            rebind.request()  # asked again while this one is being done
            return ctx.socket(zmq.ROUTER)

        (sock,) = rebind.renew([sock], poller, [make], [endpoint])
        assert sock is not None and rebind.due() and not rebind.settled(0.05)
        (sock,) = rebind.renew([sock], poller, [lambda: ctx.socket(zmq.ROUTER)], [endpoint])
        assert sock is not None and not rebind.due() and rebind.settled(0)
    finally:
        if sock is not None:
            sock.close(0)
        ctx.term()
