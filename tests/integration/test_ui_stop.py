"""How `labd ui` stops: a dashboard page left open streams a running session's events for as long as it runs
(days), and that must not keep `labd ui` from stopping."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def test_sigterm_stops_the_dashboard_while_a_page_streams_a_running_session(daemon) -> None:
    """SIGTERM with a live event stream open (a browser tab on a running session): the stream ends and `labd ui`
    exits 143 within its grace period. Before, uvicorn waited for the stream to finish, i.e. for the session to
    end, and the dashboard never stopped."""
    with daemon.client() as c:
        sid = c.start("demo.sleep", params={"seconds": 600})
    proc = subprocess.Popen([sys.executable, "-m", "labd", "--home", str(daemon.home), "ui"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"(http://127\.0\.0\.1:\d+)/#token=(\S+)", proc.stdout.readline())
        assert m, "no URL printed"
        got: list[bytes] = []
        req = urllib.request.Request(f"{m.group(1)}/api/sessions/{sid}/stream",
                                     headers={"Authorization": f"Bearer {m.group(2)}"})

        def read() -> None:
            with urllib.request.urlopen(req, timeout=60) as r:
                for line in r:
                    got.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: any(b"session.started" in line for line in got), timeout=30,
                   what="the stream sent the session's start")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)  # the grace period is 5 s; before the fix it never exited
        assert proc.returncode == 128 + signal.SIGTERM
        reader.join(30)
        assert not reader.is_alive(), "the stream stayed open after the dashboard stopped"
        assert not any(line.startswith(b"event: end") for line in got), "a stop is not the session's end"
    finally:
        proc.kill()
        proc.wait()
        with daemon.client() as c:
            c.stop(sid)
