"""The daemon's CurveZMQ keys: its server keypair and the client public keys it admits over TCP.

One keypair per home, in ``<home>/curve/server.key_secret`` (directory 0700, files 0600), created on first use and
kept across restarts: the TCP gateway, the runner gateway (Ray nodes) and the local event socket all serve with
it, and its public half goes into every connection file given out. ``remote.add`` writes each authorised client's
public key to ``<home>/curve/clients/<name>.key``; the secret half goes to the client only, inside its connection
file.
"""

from __future__ import annotations

from pathlib import Path

import zmq.auth

__all__ = ["add_client", "curve_dir", "ensure_server_keys"]


def curve_dir(home: Path) -> Path:
    return home / "curve"


def ensure_server_keys(home: Path) -> tuple[bytes, bytes]:
    """The daemon's CURVE keypair (public, secret), created once in ``<home>/curve`` (0700 / 0600)."""
    d = curve_dir(home)
    (d / "clients").mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    secret = d / "server.key_secret"
    if not secret.exists():
        pub_path, sec_path = zmq.auth.create_certificates(str(d), "server")
        Path(pub_path).chmod(0o600)
        Path(sec_path).chmod(0o600)
    public, secret_key = zmq.auth.load_certificate(str(secret))
    assert secret_key is not None
    return public, secret_key


def add_client(home: Path, name: str) -> tuple[bytes, bytes]:
    """A new client keypair named ``name``; its public key is authorised (written to ``clients/``)."""
    d = curve_dir(home)
    tmp = d / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    pub_path, sec_path = zmq.auth.create_certificates(str(tmp), name)
    public, secret = zmq.auth.load_certificate(sec_path)
    Path(pub_path).replace(d / "clients" / f"{name}.key")
    Path(sec_path).unlink()  # the secret half goes to the client only, inside its connection file
    assert secret is not None
    return public, secret
