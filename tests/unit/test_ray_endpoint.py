"""The host remote runners are told to call when ``[launcher] advertise`` is unset (daemon/ray_endpoint.py): a host
whose name resolves to a loopback address (this VM's ``vm`` is 127.0.0.1 in /etc/hosts, as Debian's 127.0.1.1) told
runners on other nodes to call their own loopback. The address of the route towards the Ray head is taken instead;
loopback stays for a head on loopback (a one-host cluster) and when there is no head to route to."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from labd.daemon import ray_endpoint
from labd.daemon.ray_endpoint import head_host, home_host


def _routed(target: str) -> str | None:
    """This host's source address towards ``target`` (None without a route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def test_the_head_of_each_form_of_address_is_read(tmp_path: Path) -> None:
    """``HOST:PORT``, ``ray://HOST:PORT``, ``[v6]:PORT``; ``auto`` reads ``RAY_ADDRESS``, else the file ``ray start``
    writes; nothing to read: None."""
    current = tmp_path / "ray_current_cluster"
    assert head_host("10.0.0.7:6379", {}, current) == "10.0.0.7"
    assert head_host("ray://head.lan:10001", {}, current) == "head.lan"
    assert head_host("[fd00::7]:6379", {}, current) == "fd00::7"
    assert head_host("auto", {"RAY_ADDRESS": "10.0.0.8:6379"}, current) == "10.0.0.8"
    assert head_host("auto", {}, current) is None
    current.write_text("10.0.0.9:6379\n")
    assert head_host("auto", {}, current) == "10.0.0.9"


def test_a_host_named_loopback_advertises_its_route_to_the_head(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """With the host's name resolving to 127.0.0.1, runners are told the address of the interface that routes to the
    head (not 127.0.0.1); a head on loopback, or an address with no head to read, keeps loopback; a host name that
    resolves to a routable address is used as before."""
    target = "192.0.2.77"  # TEST-NET-1: routed by the default route, never sent to (UDP connect sends nothing)
    monkeypatch.setattr(ray_endpoint.socket, "gethostname", lambda: "localhost")
    want = _routed(target) or "127.0.0.1"  # a machine with no route off loopback has nothing better
    assert home_host(f"{target}:6379", {}, tmp_path / "none") == want
    assert home_host(f"ray://{target}:10001", {}, tmp_path / "none") == want
    assert home_host("127.0.0.1:6379", {}, tmp_path / "none") == "127.0.0.1"
    assert home_host("auto", {}, tmp_path / "none") == "127.0.0.1"
    monkeypatch.setattr(ray_endpoint.socket, "gethostbyname", lambda name: "10.1.2.3")
    assert home_host(f"{target}:6379", {}, tmp_path / "none") == "10.1.2.3"
