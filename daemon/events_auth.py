"""Who may follow the live events of a local daemon: only processes that could read its connection file.

The event socket (an ``ipc://`` XPUB owned by ingest) is a ZeroMQ PLAIN server. A ZAP handler on the daemon's
ZeroMQ context admits one user and password: the credentials derived from the daemon key
(:func:`labd.ipc.connection.local_events_credentials`), which every local client derives from the connection file
it reads anyway. Before the socket had any mechanism, anything that could connect to the Unix socket could
subscribe to ``session.`` and read every session's output and activity: Landlock does not govern connecting to a
Unix socket, and the socket carried no secret, so even code a session's agents ran in the sandbox could follow the
other sessions (found by an attack review). Control requests were never at risk (each is signed with the key), nor
are replies (sent to the requester only).

Why PLAIN and not CurveZMQ (which this socket used first): the socket is a Unix socket in the user's private
runtime directory, so what passes through it can be read only by the kernel and by whoever could read the
processes' memory anyway; encryption there protected nothing, yet cost the daemon's and every follower's ZeroMQ
I/O thread ~0.2 us of CPU per event each (docs/benchmarks.md §32). A process that could put a listener of its own
in the socket's place (and so learn the password) could read the connection file in the first place; the sandbox
hides the runtime directory from session code (docs/design.md, "Live events only for holders of the key").
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from labd.ipc.connection import local_events_credentials

__all__ = ["LocalEventsAuth", "DOMAIN"]

DOMAIN = "labd-local-events"


class _Password(str):
    """The one admitted password, compared in constant time. pyzmq's handler checks ``given == stored``; Python
    asks the right operand first when its type is a subclass of the left's, so this ``__eq__`` is the one that
    runs (a plain ``str`` comparison stops at the first differing character)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self.encode("utf-8", "surrogatepass"), other.encode("utf-8", "surrogatepass"))

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = str.__hash__


def _quiet_log() -> logging.Logger:
    """pyzmq's handler logs an admitted PLAIN password at DEBUG: a logger of its own that never passes that on,
    whatever the root logger's level (secrets never reach the logs)."""
    log = logging.getLogger("labd.events_auth.zap")
    log.setLevel(logging.WARNING)
    log.propagate = False
    log.addHandler(logging.NullHandler())
    return log


class LocalEventsAuth:
    """The ZAP handler (a thread of pyzmq's) on ``zctx`` that admits followers of the event socket."""

    def __init__(self, zctx: zmq.Context, key: bytes) -> None:
        user, password = local_events_credentials(key)
        self._auth = ThreadAuthenticator(zctx, log=_quiet_log())
        self._auth.start()  # bound before the socket is: no handshake can come before the handler
        self._auth.configure_plain(domain=DOMAIN, passwords={user.decode(): _Password(password.decode())})

    def secure(self, sock: Any) -> None:
        """Make ``sock`` (not yet bound) a PLAIN server that requires the handler's verdict."""
        sock.plain_server = True
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler answering: refused, never let through

    def stop(self) -> None:
        self._auth.stop()
