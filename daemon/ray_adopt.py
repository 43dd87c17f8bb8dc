"""What lets a Ray session outlive the daemon that started it, and a later daemon find it again.

A Ray session's actor is *detached* (it belongs to the cluster, not to the daemon's Ray driver), named after the
session (:func:`actor_name`) in a Ray namespace of this home's own (:func:`namespace`), so that a restarted daemon
can look it up by the session id alone (:class:`labd.daemon.ray_launcher.RayLauncher.adopt`). Everything the new
daemon needs to take the runner back is derivable or kept outside the store:

- the actor: its name and namespace, from the session id and the daemon's CURVE public key;
- the runner's CurveZMQ keypair: derived from the daemon's CURVE secret and the session id
  (:func:`session_keypair`), so the new runner gateway admits the reconnecting runner's public key without any
  key having been written anywhere (the secret half goes to the runner only, in its spec);
- the runner endpoint: a runner dials the address it was given and reconnects to it; with ``runner_listen`` on
  port 0, the ports previous gateways bound are remembered in ``<home>/ray-runner-port`` (0600) and bound again,
  one that is taken once it is free (:func:`remembered_ports`, :func:`remember_ports`).
- the runner's spec, for an actor Ray had not placed yet when the daemon stopped: kept by Ray with the actor (its
  creation argument), and the runner starts when the actor is placed (:mod:`labd.daemon.ray_pending`).

The HMAC key of the session is derived from the daemon key, as for local runners.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

__all__ = ["actor_name", "namespace", "session_keypair", "remembered_ports", "remember_ports", "PORT_FILE", "MAX_PORTS",
           "WAITING", "Adoption"]

PORT_FILE = "ray-runner-port"

#: an actor in one of these states (Ray's actor table) exists and is not placed (yet): Ray places it when a node has
#: room (the driver reads the state, :func:`labd.daemon.ray_pending.actor_state`; the launcher is told it)
WAITING = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "RESTARTING")


@dataclass
class Adoption:
    """A session whose actor the Ray launcher's driver is to take back (at the daemon's start, or after its driver
    ended): :class:`labd.daemon.ray_launcher.RayLauncher`'s bookkeeping of it."""

    why: str | None = None  # said in its session.adopted (None at the daemon's start)
    unrecorded: bool = False  # the last daemon died before recording its launch: session.launched comes first
    spawned: bool = False  # its spawn was in flight when the driver ended: no actor means it never started
    #: Ray had not placed its actor when the driver ended (this daemon watched it waiting): no actor means it never
    #: ran, and while the cluster does not answer it is not waited for (False: placed, or not known at a start)
    unplaced: bool = False
    req: int | None = None  # the request sent (or held while the driver connects); None: not yet


def actor_name(sid: str) -> str:
    """The Ray name of session ``sid``'s actor (unique within the home's namespace)."""
    return f"labd-{sid}"


def namespace(server_public: bytes) -> str:
    """This home's Ray namespace: ``labd-`` and 16 hex digits of the daemon's CURVE public key (two homes on one
    cluster never see, adopt or sweep each other's actors)."""
    return "labd-" + hashlib.sha256(server_public).hexdigest()[:16]


def session_keypair(server_secret: bytes, sid: str) -> tuple[bytes, bytes]:
    """Session ``sid``'s runner CURVE keypair (z85 public, z85 secret), derived from the daemon's secret key: the
    same on every daemon of this home, unknown to anyone without that key."""
    raw = hmac.new(server_secret, b"labd-ray-runner\0" + sid.encode(), hashlib.sha256).digest()
    secret = z85.encode(raw)
    return zmq.curve_public(secret), secret


#: ports remembered at most (the newest first): a port taken at a restart is kept, and bound once it is free
MAX_PORTS = 4


def remembered_ports(home: Path) -> list[int]:
    """The runner gateway's ports of the previous daemons of this home, the newest first (runners they launched dial
    them); [] when none, or unreadable."""
    try:
        words = (home / PORT_FILE).read_text().split()
    except OSError:
        return []
    ports: list[int] = []
    for w in words[:MAX_PORTS]:
        if w.isdigit() and 0 < int(w) < 65536 and int(w) not in ports:
            ports.append(int(w))
    return ports


def remember_ports(home: Path, ports: list[int]) -> None:
    """Keep the ports runners may dial, the newest first, for the next daemon of this home (atomically, 0600)."""
    kept = list(dict.fromkeys(ports))[:MAX_PORTS]
    tmp = home / f".{PORT_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(" ".join(map(str, kept)) + "\n")
    os.replace(tmp, home / PORT_FILE)
