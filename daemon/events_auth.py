"""Who may follow the live events of a local daemon: only processes that could read its connection file.

The event socket (an ``ipc://`` XPUB owned by ingest) is a CurveZMQ server. A ZAP handler on the daemon's ZeroMQ
context admits one client key: the keypair derived from the daemon key
(:func:`labd.ipc.connection.local_events_keypair`), which every local client derives from the connection file it
reads anyway. Before this, anything that could connect to the Unix socket could subscribe to ``session.`` and read
every session's output and activity: Landlock does not govern connecting to a Unix socket, and the socket carried no
secret, so even code a session's agents ran in the sandbox could follow the other sessions (found by an attack
review). Control requests were never at risk (each is signed with the key), nor are replies (sent to the
requester only).

The server keypair is the daemon's own CurveZMQ keypair (``<home>/curve``, 0600: out of runners' reach), the one its
TCP gateway serves with; the public half goes into the connection file as ``events_public``.
"""

from __future__ import annotations

import hmac
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from labd.ipc.connection import local_events_keypair

__all__ = ["LocalEventsAuth", "DOMAIN"]

DOMAIN = "labd-local-events"


class _OneKey:
    """ZAP credentials provider: admits exactly one client public key."""

    def __init__(self, public: bytes) -> None:
        self.public = public

    def callback(self, domain: str, key: bytes) -> bool:
        """``key``: the client's public key, Z85 (pyzmq's ZAP handler encodes it before asking)."""
        return domain == DOMAIN and hmac.compare_digest(key, self.public)


class LocalEventsAuth:
    """The ZAP handler (a thread of pyzmq's) on ``zctx`` and the server keys for the event socket."""

    def __init__(self, zctx: zmq.Context, key: bytes, server_public: bytes, server_secret: bytes) -> None:
        self.public, self._secret = server_public, server_secret
        client_public, _ = local_events_keypair(key)
        self._auth = ThreadAuthenticator(zctx)
        self._auth.start()  # bound before the socket is: no handshake can come before the handler
        self._auth.configure_curve_callback(domain=DOMAIN, credentials_provider=_OneKey(client_public))

    def secure(self, sock: Any) -> None:
        """Make ``sock`` (not yet bound) a CurveZMQ server that requires the handler's verdict."""
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self._secret
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler answering: refused, never let through

    def stop(self) -> None:
        self._auth.stop()
