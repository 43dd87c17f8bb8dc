"""The local event socket's admission (daemon/events_auth.py), in one process: who is let in, what is logged."""

from __future__ import annotations

import logging
import operator
import time

import pytest
import zmq

from labd.daemon.events_auth import LocalEventsAuth, _Password
from labd.ipc.connection import EVENTS_USER, ConnectionInfo, events_socket, local_events_credentials

KEY = bytes(range(32))


def _received(pub: zmq.Socket, subs: list[zmq.Socket], until: float = 5.0) -> list[bool]:
    """Publish until the first of ``subs`` (the admitted one) receives, then give the others as long again; which
    of them received anything. Single-frame messages: libzmq 4.3.5 aborts (``session_base.cpp:233``, in
    ``clean_pipes``) when a peer's connection drops while its session holds half of a multipart message of a socket
    being closed, which these tests' teardown did now and then (docs/design.md, "A libzmq abort")."""
    got = [False] * len(subs)
    deadline = time.monotonic() + until
    while not got[0] and time.monotonic() < deadline:
        pub.send(b"session.x payload")
        got[0] = bool(subs[0].poll(20))
    settle = time.monotonic() + (0.5 if len(subs) > 1 else 0.0)
    while time.monotonic() < settle:
        pub.send(b"session.x payload")
        for i, s in enumerate(subs[1:], 1):
            got[i] = got[i] or bool(s.poll(5))
    return got


@pytest.fixture
def secured(tmp_path):
    """An XPUB secured as ingest secures it, bound to a Unix socket, and a context for clients."""
    z = zmq.Context()
    auth = LocalEventsAuth(z, KEY)
    pub = z.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    auth.secure(pub)
    endpoint = f"ipc://{tmp_path}/events.sock"
    pub.bind(endpoint)
    info = ConnectionInfo(control="", events=endpoint, runners="", key=KEY.hex(), pid=0, home=str(tmp_path),
                          events_auth="plain")
    try:
        yield pub, info, z
    finally:
        pub.close(0)
        auth.stop()
        z.term()


def _sub(z: zmq.Context, endpoint: str, sock: zmq.Socket | None = None) -> zmq.Socket:
    s = sock if sock is not None else z.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"session.")
    s.connect(endpoint)
    return s


def test_only_the_password_derived_from_the_key_is_admitted(secured) -> None:
    """A client set up from the connection file receives; no mechanism, a wrong password, another user with the
    right password, and a password one character short receive nothing."""
    pub, info, z = secured
    user, password = local_events_credentials(KEY)
    wrong = []
    for u, p in ((None, None), (user, b"f" * 64), (b"other", password), (user, password[:-1])):
        s = z.socket(zmq.SUB)
        if u is not None:
            s.plain_username, s.plain_password = u, p
        wrong.append(s)
    socks = [_sub(z, info.events, events_socket(z, info))] + [_sub(z, info.events, s) for s in wrong]
    try:
        got = _received(pub, socks)
        assert got[0], "the holder of the key received nothing"
        assert got[1:] == [False] * len(wrong)
    finally:
        for s in socks:
            s.close(0)


def test_an_admitted_password_never_reaches_a_log(secured) -> None:
    """pyzmq's ZAP handler logs an admitted PLAIN password at DEBUG through the standard logging module; with the
    root logger at DEBUG (an embedding application's choice), nothing it writes holds the password."""
    pub, info, z = secured
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    root = logging.getLogger()
    handler, level = Keep(level=logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("zmq.auth").setLevel(logging.DEBUG)
    sock = _sub(z, info.events, events_socket(z, info))
    try:
        assert _received(pub, [sock])[0]
    finally:
        sock.close(0)
        root.removeHandler(handler)
        root.setLevel(level)
    _, password = local_events_credentials(KEY)
    assert not [r for r in records if password.decode() in r]


def test_password_comparison_is_exact() -> None:
    """The stored password equals exactly itself (as pyzmq compares: ``given == stored``), for any text given."""
    stored = _Password("ab" * 32)
    # the given text on the left, as in pyzmq's handler: operator.eq(a, b) is ``a == b``
    assert operator.eq("ab" * 32, stored) and not operator.ne("ab" * 32, stored)
    for other in ("ab" * 31, "ab" * 32 + "a", "AB" * 32, "", "\udcff", "é" * 64):
        assert operator.ne(other, stored) and not operator.eq(other, stored)
    assert stored != b"ab" * 32  # bytes are never a match
    assert EVENTS_USER == b"labd"


def test_a_client_follows_a_daemon_of_an_earlier_labd(tmp_path) -> None:
    """A daemon started before the socket became PLAIN (still running after an upgrade) served it with CurveZMQ and
    wrote ``events_public``: a new client still follows it, with the server key from the file and the keypair
    derived from the key (a CURVE server without a ZAP handler admits any client key, so what this pins is the
    client's side: a wrong server key, or no CURVE at all, never completes the handshake)."""
    z = zmq.Context()
    server_public, server_secret = zmq.curve_keypair()
    pub = z.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.curve_server, pub.curve_publickey, pub.curve_secretkey = True, server_public, server_secret
    endpoint = f"ipc://{tmp_path}/old.sock"
    pub.bind(endpoint)
    info = ConnectionInfo(control="", events=endpoint, runners="", key=KEY.hex(), pid=0, home=str(tmp_path),
                          events_public=server_public.decode())
    sock = _sub(z, endpoint, events_socket(z, info))
    try:
        assert _received(pub, [sock])[0]
    finally:
        sock.close(0)
        pub.close(0)
        z.term()
