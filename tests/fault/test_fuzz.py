"""Wire fuzzing of every socket the daemon exposes, with hypothesis: the control socket, the runner socket,
the live event socket (it takes subscriptions) and the TCP gateway (CurveZMQ control and events).

Random bytes, random multipart frames, truncated and re-signed valid frames, replayed signed requests,
JSON nested hundreds of levels deep and 64 MB frames. After each batch: the daemon is alive and answers a
ping, a bystander session is untouched, the daemon's RSS is bounded, the drop counters moved, and the log
did not grow by a line per bad frame (dropped-frame warnings are rate-limited)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labd.ipc import Client
from labd.ipc.connection import events_socket
from labd.ipc.signing import derive_key
from labd.ipc.wire import PROTOCOL_VERSION, Codec
from tests.conftest import REPO, SUPPORT, DaemonProc, kill_runners, wait_until
from tests.fault.conftest import figures
from tests.integration.test_tcp import _port

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]

RSS_BOUND = 300 * 10**6
EXAMPLES = 60  # per fuzzed socket: bounded, the box is shared
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
#: log lines a batch may add: dropped-frame warnings are logged at most once a second per reason
REASONS = 8

frames_st = st.lists(st.binary(max_size=4096), min_size=1, max_size=6)


class Target:
    """The module's daemon, a bystander session, and what the checks compare against."""

    def __init__(self, daemon: DaemonProc, port: int, env: dict[str, str]) -> None:
        self.daemon, self.port, self.env = daemon, port, env
        self.client = daemon.client()
        self.info = self.client.info
        self.bystander = self.client.start("labd_testflows:ticker", params={"n": 100_000, "delay": 0.05})
        wait_until(lambda: self.client.session(self.bystander)["status"] == "running", timeout=60)
        self.remote = self.client.request("remote.add", name="fuzzer")["connection"]
        self.zctx = zmq.Context()
        self.sent = 0

    def dealer(self, endpoint: str, identity: bytes | None = None, curve: bool = False) -> zmq.Socket:
        s = self.zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100_000)
        if identity is not None:
            s.setsockopt(zmq.ROUTING_ID, identity)
        if curve:
            s.curve_serverkey = self.remote["server_public"].encode()
            s.curve_publickey = self.remote["client_public"].encode()
            s.curve_secretkey = self.remote["client_secret"].encode()
        s.connect(endpoint)
        return s

    def log_lines(self) -> int:
        return self.daemon.log().count("\n")

    def dropped(self) -> int:
        """Frames the daemon dropped so far, of any reason (the ``dropped.*`` counters)."""
        return sum(v for k, v in self.client.status()["counters"].items() if k.startswith("dropped."))

    def check(self, what: str, frames: int, lines_before: int, t0: float, dropped_before: int | None = None) -> None:
        """The daemon serves, the bystander runs on, RSS is bounded, the log grew by far less than a line a frame;
        with ``dropped_before``, the frames reached the daemon and were dropped (the counters moved past it: a batch
        that never arrived would pass every other check)."""
        if dropped_before is not None:
            wait_until(lambda: self.dropped() > dropped_before, timeout=60, what=f"the {what} frames counted dropped")
        proc = psutil.Process(self.daemon.proc.pid)  # type: ignore[union-attr]
        assert self.daemon.proc.poll() is None, "daemon died"  # type: ignore[union-attr]
        with Client(self.daemon.home, timeout=30) as c:
            assert c.ping()["pid"] == self.daemon.proc.pid  # type: ignore[union-attr]
            row = c.session(self.bystander)
            counters = c.status()["counters"]
        assert row["status"] == "running", row
        rss = proc.memory_info().rss
        elapsed = time.monotonic() - t0
        added = self.log_lines() - lines_before
        dropped = sum(v for k, v in counters.items() if k.startswith("dropped."))
        figures(f"fuzz {what}", frames=frames, seconds=round(elapsed, 1), log_lines_added=added,
                dropped_total=dropped, rss_mb=round(rss / 1e6))
        assert rss <= RSS_BOUND, f"daemon RSS {rss / 1e6:.0f} MB"
        assert added <= REASONS * (elapsed + 2), f"{added} log lines for {frames} bad frames"

    def close(self) -> None:
        self.client.close()
        self.zctx.destroy(0)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    base = Path(tempfile.mkdtemp(prefix="lfz", dir="/tmp"))
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    env = {"HOME": str(base), "XDG_RUNTIME_DIR": str(runtime), "LABD_HOME": str(base / "home"),
           "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}
    port = _port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        d = DaemonProc(base / "home", args=["--listen", f"tcp://127.0.0.1:{port}"]).start()
        t = Target(d, port, env)
        try:
            yield t
            # the bystander ran through every batch: its runner events are gap-free and none was rejected
            with d.client() as c:
                c.stop(t.bystander, grace=1)
                final = c.wait(t.bystander, timeout=60)
                seqs = [e["src_seq"] for e in c.history(t.bystander) if e["src"] == "runner"]
                kinds = {e["kind"] for e in c.history(t.bystander)}
            assert final["status"] == "cancelled", final
            assert seqs == list(range(1, len(seqs) + 1)) and "event.rejected" not in kinds
            figures("fuzz bystander", runner_events=len(seqs))
        finally:
            t.close()
            d.stop()
            kill_runners(d.home)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fz(target: Target, monkeypatch: pytest.MonkeyPatch) -> Target:
    for k, v in target.env.items():
        monkeypatch.setenv(k, v)
    return target


def _pump(s: zmq.Socket, frames: list[bytes]) -> None:
    s.send_multipart(frames)
    while s.poll(0):  # replies (errors) to what got through: read, so nothing piles up
        s.recv_multipart()


def _nested(depth: int) -> bytes:
    """JSON nested ``depth`` levels deep (by hand: encoders refuse past 255)."""
    return b'{"a":[' * depth + b"1" + b"]}" * depth


def _signed(codec: Codec, type_: str, body: bytes) -> list[bytes]:
    """A validly signed message whose JSON body is given as bytes (so it can be deeper than any encoder allows)."""
    raw = b'{"v":%d,"id":"%s","ts":%r,"type":"%s","body":%s}' % (
        PROTOCOL_VERSION, codec.new_id().encode(), time.time(), type_.encode(), body)
    return [codec.signer.sign(raw), raw]


def test_fuzz_control_socket(fz: Target) -> None:
    """Random multipart frames, valid requests cut short or with a flipped byte, and valid signed requests
    nested 300-3000 levels deep on the local control socket: dropped (or answered bad_request), never a crash."""
    s = fz.dealer(fz.info.control)
    codec = Codec(fz.info.key_bytes)
    lines, t0, n, dropped = fz.log_lines(), time.monotonic(), [0], fz.dropped()

    @FUZZ
    @given(frames=frames_st, cut=st.integers(0, 200), depth=st.integers(300, 3000), flip=st.integers(0, 63))
    def batch(frames: list[bytes], cut: int, depth: int, flip: int) -> None:
        _pump(s, frames)
        sig, raw = codec.pack("daemon.ping", {})
        _pump(s, [sig, raw[:cut]])  # truncated
        _pump(s, [sig])  # a frame missing
        _pump(s, [bytes([sig[0] ^ (flip | 1)]) + sig[1:], raw])  # bad signature
        _pump(s, _signed(codec, "session.list", b'{"limit":' + _nested(depth) + b"}"))  # deep but signed
        n[0] += 5

    batch()
    s.close(0)
    fz.check("control", n[0], lines, t0, dropped)


def test_fuzz_runner_socket(fz: Target) -> None:
    """On the runner socket: random frames from random routing ids (including ones naming the bystander's
    session), frames signed with the wrong key, and deeply nested event batches signed with a session's own
    key (a session that has ended): dropped or rejected, the bystander never disturbed."""
    ended = fz.client.start("demo.count", params={"n": 1, "delay": 0})
    fz.client.wait(ended, timeout=60)
    good = Codec(derive_key(fz.info.key_bytes, ended))
    wrong = Codec(derive_key(fz.info.key_bytes, "someone-else"))
    lines, t0, n, dropped = fz.log_lines(), time.monotonic(), [0], fz.dropped()
    owned = fz.dealer(fz.info.runners, f"{ended}:fuzz".encode())

    @FUZZ
    @given(frames=frames_st, ident=st.sampled_from([fz.bystander, ended, "x" * 80, ""]),
           tail=st.binary(min_size=1, max_size=8), depth=st.integers(300, 2000))
    def batch(frames: list[bytes], ident: str, tail: bytes, depth: int) -> None:
        s = fz.dealer(fz.info.runners, ident.encode() + b":" + tail.hex().encode() if ident else None)
        s.send_multipart(frames)
        s.send_multipart(wrong.pack("events", {"session": fz.bystander, "events": []}))
        s.close(0)
        ev = b'[1000000,%r,"custom",null,null,{"name":"deep","data":%s}]' % (time.time(), _nested(depth))
        _pump(owned, _signed(good, "events", b'{"session":"%s","events":[%s]}' % (ended.encode(), ev)))
        n[0] += 3

    batch()
    owned.close(0)
    fz.check("runners", n[0], lines, t0, dropped)


def test_fuzz_event_socket(fz: Target) -> None:
    """The live event socket takes subscriptions: random subscribe/unsubscribe messages (and random bytes)
    from an XSUB are harmless; a real follower still gets live events afterwards."""
    x = events_socket(fz.zctx, fz.info, zmq.XSUB)
    x.connect(fz.info.events)
    lines, t0, n = fz.log_lines(), time.monotonic(), [0]

    @FUZZ
    @given(msgs=st.lists(st.binary(max_size=2048), min_size=1, max_size=20))
    def batch(msgs: list[bytes]) -> None:
        for m in msgs:
            x.send(m)
            x.send(b"\x01" + m)
            x.send(b"\x00" + m)
        n[0] += 3 * len(msgs)

    batch()
    x.close(0)
    fz.check("events", n[0], lines, t0)
    sid = fz.client.start("demo.count", params={"n": 2, "delay": 0.01})
    assert [e["kind"] for e in fz.client.follow(sid, timeout=60)][-1] == "session.ended"


def test_fuzz_tcp_gateway(fz: Target) -> None:
    """Over TCP: random frames from an authorised CURVE client (relayed, then dropped by the daemon), and
    random bytes from plain TCP peers on both ports (no handshake, nothing reaches the daemon)."""
    s = fz.dealer(f"tcp://127.0.0.1:{fz.port}", curve=True)
    lines, t0, n, dropped = fz.log_lines(), time.monotonic(), [0], fz.dropped()

    @FUZZ
    @given(frames=frames_st, raw=st.binary(min_size=1, max_size=4096), port=st.sampled_from([0, 1]))
    def batch(frames: list[bytes], raw: bytes, port: int) -> None:
        _pump(s, frames)
        with socket.create_connection(("127.0.0.1", fz.port + port), timeout=5) as plain:
            try:
                plain.sendall(raw)
            except OSError:
                pass  # the daemon hung up first: fine
        n[0] += 2

    batch()
    s.close(0)
    fz.check("tcp", n[0], lines, t0, dropped)
    remote = Path(fz.env["HOME"]) / "fuzzer.json"
    remote.write_text(json.dumps(fz.remote))
    remote.chmod(0o600)
    with Client(connection_file=remote, timeout=30) as c:
        assert c.ping()["pid"] == fz.daemon.proc.pid  # type: ignore[union-attr]


def test_replayed_signed_request_acts_once(fz: Target) -> None:
    """A captured, validly signed session.start sent again (locally and through the TCP gateway) is dropped
    as replayed: one session, not two (and not three)."""
    codec = Codec(fz.info.key_bytes)
    before = len(fz.client.sessions(limit=10_000))
    frames = codec.pack("session.start", {"workflow": "demo.count", "params": {"n": 1, "delay": 0}})
    local = fz.dealer(fz.info.control)
    local.send_multipart(frames)
    assert local.poll(30_000), "no reply to the first start"
    reply = codec.unpack(local.recv_multipart())
    assert reply.body["ok"], reply.body
    lines, t0 = fz.log_lines(), time.monotonic()
    for _ in range(50):
        local.send_multipart(frames)
    tcp = fz.dealer(f"tcp://127.0.0.1:{fz.port}", curve=True)
    for _ in range(50):
        tcp.send_multipart(frames)
    assert not local.poll(2000) and not tcp.poll(0), "a replay was answered"
    fz.client.wait(reply.body["result"]["session"], timeout=60)
    assert len(fz.client.sessions(limit=10_000)) == before + 1
    assert fz.client.status()["counters"].get("dropped.control.replayed", 0) >= 100
    local.close(0)
    tcp.close(0)
    fz.check("replay", 100, lines, t0)


def test_oversized_frames(fz: Target) -> None:
    """64 MB frames on the control, runner and TCP sockets (over the transport's limit: the peer is cut off)
    and 20 MB ones (over max_message: dropped and counted): the daemon serves on with bounded memory."""
    big, mid = os.urandom(64 * 10**6), os.urandom(20 * 10**6)
    lines, t0 = fz.log_lines(), time.monotonic()

    oversized = fz.dropped  # dropped frames of any reason (the runner socket checks the routing id first)

    for endpoint, curve in ((fz.info.control, False), (fz.info.runners, False),
                            (f"tcp://127.0.0.1:{fz.port}", True)):
        before = oversized()
        for payload in (big, mid):
            s = fz.dealer(endpoint, curve=curve)
            s.send_multipart([b"sig", payload])
            if payload is mid:  # delivered (and dropped) before the socket goes: LINGER 0 would discard it
                wait_until(lambda b=before: oversized() > b, timeout=60, what=f"the 20 MB frame counted ({endpoint})")
            s.close(0)
    del big, mid
    fz.check("oversized", 6, lines, t0)
