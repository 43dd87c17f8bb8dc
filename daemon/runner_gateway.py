"""The runner endpoint on TCP, for runners on other machines (Ray launcher): CurveZMQ, one keypair per session.

One thread owns a CURVE-server ROUTER on ``tcp://HOST:PORT`` and relays each remote runner to the daemon's local
``ipc://`` runner socket through a DEALER of its own that carries the runner's routing id, so ingest sees the
same connection identities (``<session>:<nonce>``) and signatures as from a local runner and is unchanged.

Admission, in two layers:

- the CURVE handshake (ZAP handler, :class:`SessionKeys`): only the client public key of a session that is running
  is admitted (derived from the daemon's secret and the session id, :func:`labd.daemon.ray_adopt.session_keypair`,
  so a restarted daemon admits a runner that outlived its predecessor, :meth:`RunnerGateway.readmit`); a peer
  without CURVE, or with any other key, never gets a message through;
- the relay: a message is passed on only if its routing id names the session that key was issued to (the
  ``User-Id`` ZAP gives the connection), so one session's key cannot speak for another session.

Every message is still HMAC-signed with the session's own derived key and checked by ingest as usual. The server
keypair is the daemon's (``<home>/curve``, shared with the client gateway); its public half is pinned in the runner.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import structlog
import zmq
from zmq.auth.thread import ThreadAuthenticator

from labd.daemon.curve_keys import ensure_server_keys
from labd.daemon.curve_relay import Relays, curve_server_socket
from labd.daemon.inbound import TcpRebind
from labd.daemon.ray_adopt import session_keypair

__all__ = ["RunnerGateway", "SessionKeys"]

DOMAIN = "labd-runners"
RELAY_IDLE_S = 3600.0  # a runner heartbeats every second: an hour of silence is a dead connection
#: how long the handshake of an unknown key waits for the daemon to finish adopting (a refused CURVE handshake is
#: a protocol error to ZeroMQ: the runner would never dial again); under ZeroMQ's 30 s handshake timeout
SETTLE_WAIT_S = 20.0
WAITING_PORT_RETRY_S = 2.0  # how often a remembered runner port that was taken is tried again


class SessionKeys:
    """The client keys admitted by ZAP: z85 public key -> session id (thread-safe).

    Until :attr:`settled` is set (the daemon adopted what its predecessor left), an unknown key is not refused at
    once: its handshake waits (up to :data:`SETTLE_WAIT_S`) for the adoption that may admit it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[bytes, str] = {}
        self.settled = threading.Event()

    def add(self, public: bytes, sid: str) -> None:
        with self._lock:
            self._keys[public] = sid

    def remove_session(self, sid: str) -> None:
        with self._lock:
            for k in [k for k, s in self._keys.items() if s == sid]:
                del self._keys[k]

    def session_of(self, public: bytes) -> str | None:
        with self._lock:
            return self._keys.get(public)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's CURVE credentials-provider hook (called by the ZAP thread)."""
        if domain != DOMAIN:
            return False
        if self.session_of(key) is None and not self.settled.is_set():
            self.settled.wait(SETTLE_WAIT_S)  # a runner of the previous daemon, reconnecting before its adoption
        return self.session_of(key) is not None


class RunnerGateway(threading.Thread):
    """Relays CURVE runners on TCP to the local runner socket."""

    def __init__(self, home: Path, listen: str, local: str, max_message: int, prefer_ports: list[int] | None = None,
                 adopting: bool = False) -> None:
        """``prefer_ports``: with port 0 in ``listen``, the previous daemons' ports, the newest first: the first free
        one is the endpoint, and the others (runners they launched dial them) are bound too, each as soon as it is
        free; ``adopting``: unknown keys wait for :meth:`settle` (runners of a previous daemon may be adopted)."""
        super().__init__(name="labd-runner-gateway", daemon=True)
        self.listen, self.local, self.max_message = listen, local, max_message
        self.prefer_ports = list(prefer_ports or [])
        #: remembered ports not bound yet (taken by another program): tried again every few seconds (this thread
        #: binds them; the daemon's main loop may give them up: :meth:`forget_waiting`)
        self.waiting_ports: list[int] = []
        self._waiting_lock = threading.Lock()
        self._host = ""
        self.public, self._secret = ensure_server_keys(home)
        self.keys = SessionKeys()
        if not adopting:
            self.keys.settled.set()
        self.log = structlog.get_logger("labd.runner_gateway")
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.endpoint = ""  # the bound address, with the real port when listen asked for port 0
        self.refused = 0  # messages dropped because their routing id names another session
        #: sessions whose runner has called through this gateway (a set the launcher reads and prunes; one add per
        #: session, from the gateway's thread)
        self.heard: set[str] = set()
        self._halt = threading.Event()
        self._ctx = zmq.Context()
        #: the daemon passed its memory ceiling: drop every remote runner's connection (daemon/inbound.py); they
        #: reconnect (to the same port) and re-send what was not acknowledged
        self.rebind = TcpRebind()

    def authorize(self, sid: str) -> dict[str, str]:
        """``sid``'s runner CURVE keypair, admitted from now on; returns what the runner's spec carries."""
        public, secret = session_keypair(self._secret, sid)
        self.keys.add(public, sid)
        return {"public": public.decode(), "secret": secret.decode(), "server_public": self.public.decode()}

    def readmit(self, sid: str) -> None:
        """Admit ``sid``'s runner key again (a runner started by a previous daemon of this home reconnects)."""
        self.keys.add(session_keypair(self._secret, sid)[0], sid)

    def settle(self) -> None:
        """Every session left by a previous daemon was adopted (or declared lost): unknown keys are refused now."""
        self.keys.settled.set()

    def revoke(self, sid: str) -> None:
        """The session ended: its key no longer opens a connection (one already open stays until it closes)."""
        self.keys.remove_session(sid)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        auth = None
        try:
            auth = ThreadAuthenticator(self._ctx)
            auth.start()
            auth.configure_curve_callback(domain=DOMAIN, credentials_provider=self.keys)
            router = curve_server_socket(self._ctx, zmq.ROUTER, self.public, self._secret, DOMAIN, self.max_message)
            host, _, port = self.listen[len("tcp://"):].rpartition(":")
            if port in ("0", "*"):
                self.endpoint = self._bind_any(router, host)
            else:
                router.bind(self.listen)
                self.endpoint = self.listen
        except Exception as exc:  # noqa: BLE001 - reported to the launcher, which refuses to start
            self.error = exc
            if auth is not None:
                auth.stop()
            self._ctx.destroy(0)
            self.ready.set()
            return
        self.ready.set()
        self.log.info("runner endpoint on TCP (CurveZMQ)", endpoint=self.endpoint)
        self._router: zmq.Socket | None = router  # the socket in use, replaced by a reset
        try:
            self._relay()
        finally:
            if self._router is not None:
                self._router.close(0)
            auth.stop()
            self._ctx.destroy(0)

    def _bind_any(self, router: zmq.Socket, host: str) -> str:
        """Bind the first remembered port that is free (runners of the previous daemons dial them) as the endpoint,
        else any free port; every other remembered port too, now or once it is free (:meth:`_bind_waiting`). A port
        taken at a restart was given up for good: its runners never reconnected, their sessions stayed `running`
        with no output (Ray review)."""
        self._host = host
        endpoint = ""
        for port in self.prefer_ports:
            try:
                router.bind(f"tcp://{host}:{port}")
            except zmq.ZMQError as exc:
                self.log.warning("a previous runner port is taken: its runners reconnect once it is free (a fixed "
                                 "[launcher] runner_listen port avoids this)", port=port, error=str(exc))
                self.waiting_ports.append(port)
                continue
            endpoint = endpoint or f"tcp://{host}:{port}"
        return endpoint or f"tcp://{host}:{router.bind_to_random_port(f'tcp://{host}')}"

    def _bind_waiting(self, router: zmq.Socket) -> None:
        """Bind the remembered ports that were taken, those that are free now."""
        with self._waiting_lock:
            for port in list(self.waiting_ports):
                try:
                    router.bind(f"tcp://{self._host}:{port}")
                except zmq.ZMQError:
                    continue
                self.waiting_ports.remove(port)
                self.log.warning("a previous runner port is free again and bound: its runners reconnect", port=port)

    def forget_waiting(self) -> None:
        """Give up the remembered ports not bound yet (no runner dials them: nothing was adopted)."""
        with self._waiting_lock:
            self.waiting_ports.clear()

    def _relay(self) -> None:
        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        # the relay connects with the runner's routing id: ingest sees the same identity as from a local runner
        relays = Relays(self._ctx, poller, self.local, RELAY_IDLE_S, keep_identity=True)
        tried = time.monotonic()
        try:
            while not self._halt.is_set():
                if self.rebind.due():
                    router = self._router = self._reset(router, poller)
                ready = dict(poller.poll(200))
                if router is None:
                    continue
                if self.waiting_ports and time.monotonic() - tried > WAITING_PORT_RETRY_S:
                    tried = time.monotonic()
                    self._bind_waiting(router)
                if router in ready:
                    for _ in range(1000):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._upstream(frames, relays)
                relays.reply(ready, router)
                relays.sweep()
        finally:
            relays.close()

    def _reset(self, router: zmq.Socket | None, poller: zmq.Poller) -> zmq.Socket | None:
        """A new TCP socket for the old one (every remote runner's connection dropped), or None until its port can be
        bound again (tried each pass: :class:`TcpRebind`)."""
        [router] = self.rebind.renew([router], poller, [lambda: curve_server_socket(
            self._ctx, zmq.ROUTER, self.public, self._secret, DOMAIN, self.max_message)], [self.endpoint])
        if router is not None:
            self.log.warning("dropped every remote runner's connection (the daemon passed its memory ceiling)")
            # the new socket has the endpoint only: the other remembered ports are bound again by the relay loop
            primary = self.endpoint.rpartition(":")[2]
            with self._waiting_lock:
                self.waiting_ports[:] = [p for p in self.prefer_ports if str(p) != primary]
        else:
            self.log.error("cannot bind the runner endpoint's port again yet: remote runners wait",
                           endpoint=self.endpoint)
        return router

    def _upstream(self, frames: list[zmq.Frame], relays: Relays) -> None:
        if len(frames) < 2:
            return
        ident = frames[0].bytes
        try:
            user = frames[1].get("User-Id")
        except zmq.ZMQError:
            user = None
        sid = self.keys.session_of(user.encode()) if isinstance(user, str) else None
        if sid is None or not ident.startswith(sid.encode() + b":"):
            self.refused += 1  # a key issued for another session (or revoked): not passed on
            return
        relays.send(ident, [f.bytes for f in frames[1:]])
        self.heard.add(sid)
