"""The host a Ray session's runner dials to call home, when ``[launcher] advertise`` does not name it.

The runner gateway listens on every interface by default (``runner_listen = "tcp://0.0.0.0:0"``), and runners on
other nodes need an address of this host they can reach. The host's name was used (``gethostbyname(gethostname())``),
but on many Linux hosts that name resolves to a loopback address (Debian's ``127.0.1.1``; containers' ``127.0.0.1``):
every runner on another node was then told to call its own loopback, and no session placed there ever reported (a Ray
review, 2026-12-07). When the name gives a loopback address, the address this host uses to reach the Ray cluster's
head is taken instead (the source address of a UDP socket *connected* towards it: no packet is sent): the interface
the nodes see this host on. A head on a loopback address means a cluster of this one host: loopback is right then.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

__all__ = ["home_host", "head_host", "is_loopback"]

#: where ``ray start --head`` records the local cluster's address, which ``address = "auto"`` connects to
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def is_loopback(ip: str) -> bool:
    """Whether ``ip`` is a loopback address (False for anything that is not an address)."""
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def head_host(address: str, environ: dict[str, str] | None = None, current: Path = CURRENT_CLUSTER) -> str | None:
    """The host part of the Ray cluster ``address`` (``HOST:PORT``, ``ray://HOST:PORT``; ``auto``: ``RAY_ADDRESS``,
    else the local head's recorded address); None if there is none to read."""
    env = os.environ if environ is None else environ
    if address in ("", "auto"):
        address = env.get("RAY_ADDRESS", "")
        if not address or address == "auto":
            try:
                address = current.read_text().strip()
            except OSError:
                return None
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0] if ":" in rest and not rest.endswith("]") else rest
    host = host.strip("[]")
    return host or None


def home_host(address: str, environ: dict[str, str] | None = None, current: Path = CURRENT_CLUSTER) -> str:
    """This host's address for runners on the cluster at ``address`` to dial: its name's address unless that is a
    loopback one, else the local address of the route to the cluster's head (still loopback for a head on a loopback
    address, or when the head cannot be resolved or routed to)."""
    own = socket.gethostbyname(socket.gethostname())
    if not is_loopback(own):
        return own
    head = head_host(address, environ, current)
    if head is None:
        return own
    try:
        infos = socket.getaddrinfo(head, 9, socket.AF_INET, socket.SOCK_DGRAM)
        target = str(infos[0][4][0])
        if is_loopback(target):
            return own
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))  # a route chosen, nothing sent
            found = str(s.getsockname()[0])
    except (OSError, IndexError):
        return own
    return own if is_loopback(found) or found == "0.0.0.0" else found
