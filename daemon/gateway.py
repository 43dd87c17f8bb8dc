"""The TCP gateway: the control and event sockets on ``tcp://``, always encrypted and authenticated (CurveZMQ).

``labd serve --listen tcp://0.0.0.0:7450`` (or ``[daemon] listen``) starts one thread that owns two TCP sockets
and relays them to the daemon's local ``ipc://`` sockets, so the daemon's main loop and ingest are unchanged:

- control: a ROUTER on PORT. Each remote client gets its own DEALER connected to the local control socket;
  its frames (still HMAC-signed by the client, and checked by the daemon as usual) are passed through, and the
  replies come back to it. Idle relays are closed (at most :data:`MAX_RELAYS`; :mod:`labd.daemon.curve_relay`,
  shared with the runner gateway).
- events: an XPUB on PORT+1 fed by an XSUB connected to the local event socket; subscriptions travel upstream,
  so ingest still encodes a session's live tail only while somebody follows it.

Both TCP sockets are CURVE servers; the ZAP handler (pyzmq's ``ThreadAuthenticator``) admits only client public
keys in ``<home>/curve/clients/`` — written by ``remote.add`` — and only over CURVE: a plain TCP peer, or one
with an unknown key, never completes the handshake. The server keypair (:mod:`labd.daemon.curve_keys`)
is created once; its public half goes into every connection file given out.
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog
import zmq
from zmq.auth.thread import ThreadAuthenticator

from labd.daemon.curve_keys import curve_dir, ensure_server_keys
from labd.daemon.curve_relay import Relays, curve_server_socket
from labd.daemon.inbound import TcpRebind
from labd.daemon.warnlimit import FailureLog
from labd.ipc.connection import ConnectionInfo, events_socket

__all__ = ["Gateway", "check_listen"]

MAX_RELAYS = 256
RELAY_IDLE_S = 300.0


class ListenError(ValueError):
    """A ``--listen`` address labd will not serve."""


def check_listen(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port). Only TCP is accepted here: local clients use ``ipc://`` already."""
    if not address.startswith("tcp://"):
        raise ListenError(f"--listen takes tcp://HOST:PORT (got {address!r}); local clients use ipc:// already")
    host, _, port = address[len("tcp://"):].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise ListenError(f"bad listen address {address!r}: use tcp://HOST:PORT (events use PORT+1)")
    return host, int(port)


class Gateway(threading.Thread):
    """Relays TCP (CURVE) clients to the daemon's local control and event sockets."""

    def __init__(self, home: Path, listen: str, local: ConnectionInfo, max_message: int) -> None:
        super().__init__(name="labd-gateway", daemon=True)
        self.host, self.port = check_listen(listen)
        self.home, self.control, self.events, self.max_message = home, local.control, local.events, max_message
        self._local = local  # the local event socket is CURVE-secured too: the relay follows it as a local client
        self.public, self._secret = ensure_server_keys(home)
        self.log = structlog.get_logger("labd.gateway")
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        #: the memory ceiling passed, or a client revoked: drop every remote connection (daemon/inbound.py)
        self.rebind = TcpRebind()
        self._why = "the daemon passed its memory ceiling"  # what the next drop is for, in its log line

    @property
    def endpoints(self) -> tuple[str, str]:
        return f"tcp://{self.host}:{self.port}", f"tcp://{self.host}:{self.port + 1}"

    def reload_clients(self) -> None:
        """Re-read the authorised client keys (after ``remote.add`` / a removed key file)."""
        if self._auth is not None:
            self._auth.configure_curve(domain="labd", location=str(curve_dir(self.home) / "clients"))

    def revoke(self) -> None:
        """After a client's key was removed: drop every remote connection, so one the revoked client holds ends too
        (the authenticator sees only new connections: a client connected before its removal went on starting
        sessions). The others reconnect at once and are authenticated again."""
        self.reload_clients()
        self._why = "a remote client was removed: connections authenticated again"
        self.rebind.request()

    def stop(self) -> None:
        self._halt.set()

    def _server_socket(self, kind: int) -> zmq.Socket:
        return curve_server_socket(self._ctx, kind, self.public, self._secret, "labd", self.max_message)

    def _reset(self, router: zmq.Socket | None, xpub: zmq.Socket | None,
               poller: zmq.Poller) -> tuple[zmq.Socket | None, zmq.Socket | None]:
        """New TCP sockets for the old ones (every remote connection dropped); one whose port cannot be bound yet
        is None and tried again next pass (:class:`TcpRebind`)."""
        router, xpub = self.rebind.renew([router, xpub], poller, [lambda: self._server_socket(zmq.ROUTER),
                                                                  lambda: self._server_socket(zmq.XPUB)],
                                         list(self.endpoints))
        if router is not None and xpub is not None:
            self.log.warning(f"dropped every remote connection ({self._why})")
            self._why = "the daemon passed its memory ceiling"
        else:
            self.log.error("cannot bind the TCP gateway's port again yet: remote clients wait",
                           control=router is not None, events=xpub is not None)
        return router, xpub

    def run(self) -> None:
        try:
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self.reload_clients()
            control = self._server_socket(zmq.ROUTER)
            control.bind(self.endpoints[0])
            events = self._server_socket(zmq.XPUB)
            events.bind(self.endpoints[1])
            router: zmq.Socket | None = control
            xpub: zmq.Socket | None = events
            xsub = events_socket(self._ctx, self._local, zmq.XSUB)
            xsub.connect(self.events)
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which refuses to start
            self.error = exc
            if self._auth is not None:
                self._auth.stop()
            self._ctx.destroy(0)
            self.ready.set()
            return
        self.ready.set()
        self.log.info("listening on TCP (CurveZMQ)", control=self.endpoints[0], events=self.endpoints[1])
        poller = zmq.Poller()
        relays = Relays(self._ctx, poller, self.control, RELAY_IDLE_S, MAX_RELAYS)
        for s in (router, xpub, xsub):
            poller.register(s, zmq.POLLIN)
        # A pass that fails (no file descriptor left for a new relay: the daemon flooded with connections) drops
        # what it was passing on (the remote client times out and retries) and the gateway goes on: before, the
        # thread ended and remote clients got no answer until a restart.
        failures = FailureLog(self.log, "the TCP gateway works again")
        try:
            while not self._halt.is_set():
                try:
                    if self.rebind.due():  # what libzmq holds for remote peers goes with their connections
                        router, xpub = self._reset(router, xpub, poller)
                    ready = dict(poller.poll(200))
                    if router is not None and router in ready:
                        frames = router.recv_multipart()
                        relays.send(frames[0], frames[1:])
                    if router is not None:
                        relays.reply(ready, router)
                    if xpub is not None and xpub in ready:  # subscriptions from remote followers, upstream
                        xsub.send(xpub.recv())
                    if xsub in ready:
                        msg = xsub.recv_multipart()
                        if xpub is not None:
                            xpub.send_multipart(msg)
                    relays.sweep()
                except zmq.ZMQError as exc:
                    if self._halt.is_set():
                        break
                    failures.failed("TCP gateway pass failed", exc)
                else:
                    failures.worked("TCP gateway pass failed")
        finally:
            relays.close()
            for s in (router, xpub, xsub):
                if s is not None:
                    s.close(0)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()
