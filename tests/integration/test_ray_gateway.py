"""The TCP runner endpoint of the Ray launcher (daemon/runner_gateway.py), over real sockets without Ray: a runner
key admits its own session only, messages and replies pass through unchanged with the runner's routing id, and a
revoked key opens no new connection."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from labd.daemon.runner_gateway import RunnerGateway
from tests.conftest import wait_until


def _dealer(ctx: zmq.Context, endpoint: str, keys: dict[str, str], ident: bytes) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, ident)
    s.curve_serverkey = keys["server_public"].encode()
    s.curve_publickey = keys["public"].encode()
    s.curve_secretkey = keys["secret"].encode()
    s.connect(endpoint)
    return s


def test_key_binds_session_and_relays_both_ways(tmp_path: Path) -> None:
    """A message from session A's key with A's routing id reaches the local runner socket with that routing id, and
    the daemon's reply comes back; the same key claiming session B's routing id is dropped (counted), and after
    revocation a fresh connection with A's key is refused in the CURVE handshake."""
    ctx = zmq.Context()
    local = ctx.socket(zmq.ROUTER)
    local.setsockopt(zmq.LINGER, 0)
    endpoint_local = f"ipc://{tmp_path}/r.sock"
    local.bind(endpoint_local)
    gw = RunnerGateway(tmp_path / "gwhome", "tcp://127.0.0.1:0", endpoint_local, 1 << 20)
    gw.start()
    try:
        assert gw.ready.wait(10) and gw.error is None
        keys = gw.authorize("aaa")
        good = _dealer(ctx, gw.endpoint, keys, b"aaa:1")
        good.send_multipart([b"hello", b"a"])
        assert local.poll(10_000), "nothing relayed"
        ident, *frames = local.recv_multipart()
        assert ident == b"aaa:1" and frames == [b"hello", b"a"]
        local.send_multipart([ident, b"ack"])
        assert good.poll(10_000) and good.recv_multipart() == [b"ack"]

        forged = _dealer(ctx, gw.endpoint, keys, b"bbb:1")  # A's key, speaking for B
        forged.send_multipart([b"hello", b"b"])
        wait_until(lambda: gw.refused >= 1, timeout=10, what="forged message refused")
        assert not local.poll(300)

        gw.revoke("aaa")
        late = _dealer(ctx, gw.endpoint, keys, b"aaa:2")
        mon = late.get_monitor_socket()
        from zmq.utils.monitor import recv_monitor_message

        seen: set[int] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and zmq.EVENT_HANDSHAKE_FAILED_AUTH not in seen:
            if mon.poll(200):
                seen.add(recv_monitor_message(mon)["event"])
        assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in seen and zmq.EVENT_HANDSHAKE_SUCCEEDED not in seen, seen
        late.disable_monitor()
        mon.close(0)
        for s in (good, forged, late):
            s.close(0)
    finally:
        gw.stop()
        gw.join(5)
        local.close(0)
        ctx.term()
