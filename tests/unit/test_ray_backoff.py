"""A Ray cluster that does not answer (Ray review): the launcher tries a driver start at most once per backoff, and
between tries refuses a launch at once, saying since when and why; ``daemon.status`` shows it. Each try holds the
daemon's main loop until the driver's start timeout, and every ``--on ray`` start tried again: the whole daemon froze
~70 s per start."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from labd.daemon.launcher import LaunchError
from labd.daemon.ray_launcher import DOWN_BACKOFF_S, RayLauncher

pytestmark = pytest.mark.timeout(120)


def _drivers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "labd.daemon.ray_driver" in " ".join(p.cmdline())]


def test_an_unanswering_cluster_is_tried_once_per_backoff(tmp_path: Path) -> None:
    """The first launch tries a driver and fails; the next one fails at once, naming the cluster, since when and
    when it tries again, and starts no driver; the launcher's health says it is down."""
    ray = RayLauncher(tmp_path, f"ipc://{tmp_path}/runners", 1 << 20,
                      {"kind": "ray", "address": "127.0.0.1:1", "runner_listen": "tcp://127.0.0.1:0"}, timeout=5.0)
    with pytest.raises(LaunchError):
        ray._driver()
    assert not _drivers()
    with pytest.raises(LaunchError) as again:
        ray._driver()
    assert "the Ray cluster at 127.0.0.1:1 does not answer (since" in str(again.value)
    assert "labd tries again in" in str(again.value) and not _drivers()
    health = ray.health()
    assert health["down_since"] and not health["driver"] and 0 < health["retry_in"] <= DOWN_BACKOFF_S
