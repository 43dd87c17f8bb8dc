"""`labd ui` as a process: the loopback socket, the printed URL with its token, uvicorn's run and stop (SIGTERM, the
grace period for requests still running), and ``--open``'s redirect file. The app it serves is
:func:`labd.frontends.ui.server.build_app`."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

from labd.frontends.ui.deadline import HeaderDeadline
from labd.frontends.ui.server import build_app
from labd.ipc.units import shortened

__all__ = ["run"]

#: --open's redirect file is removed after this many seconds (or at exit, if sooner): long enough for a browser that
#: is slow to start to read it, not the dashboard's whole life. For tests only, ``LABD_UI_OPEN_FILE_S`` in the
#: environment of `labd ui` shortens it (a test cannot wait two minutes to see the file go).
OPEN_FILE_S = 120.0
#: On stop, requests still running after this many seconds are cancelled (a live stream ends within a fraction of a
#: second: labd.frontends.ui.live.STOP_CHECK_S).
SHUTDOWN_GRACE_S = 5


def run(home: str | None, port: int = 0, open_browser: bool = False, token: str | None = None) -> int:
    """Serve the dashboard on 127.0.0.1 until Ctrl-C; prints the URL (with its token) first."""
    import uvicorn

    token = token or secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        print(f"labd: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    except OverflowError:  # what bind() raises for a port out of range
        print(f"labd: cannot listen on 127.0.0.1:{port}: a port is a number from 0 to 65535", file=sys.stderr)
        return 2
    sock.listen(128)  # before the URL is printed: a client that connects at once waits in the backlog
    port_ref = [sock.getsockname()[1]]
    url = f"http://127.0.0.1:{port_ref[0]}/#token={token}"
    print(f"labd ui: {url}", flush=True)
    print("  (Ctrl-C stops the dashboard; sessions keep running)", flush=True)
    # access_log off: a request line of the old ?token= form would carry the token
    # An open page streams until its session ends (days): the streams end when the server stops (``stopping``),
    # and the grace period is the backstop for a request still waiting on the daemon
    # HeaderDeadline: a connection that never completes its request's headers is closed (each held a descriptor)
    config = uvicorn.Config(build_app(home, token, port_ref, lambda: server.should_exit), log_level="warning",
                            access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, http=HeaderDeadline)
    server = uvicorn.Server(config)
    stopped_by: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        # Only ask the server to stop: raising from a handler (SystemExit) would leave at whatever line the loop
        # was on, perhaps with a lock held. Replaces SIGTERM's default action, which would end us before the
        # cleanup below; uvicorn takes the signal itself while it serves and raises it again on its way out.
        stopped_by.append(signum)
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)  # before the browser starts: a stop meanwhile still removes its file
    opener = _open_browser(url) if open_browser else None
    try:
        server.run(sockets=[sock])
    finally:
        if opener is not None:
            opener.unlink(missing_ok=True)
    return 128 + stopped_by[0] if stopped_by else 0


def _open_browser(url: str) -> Path:
    """Open ``url`` in a browser through a 0600 file that redirects to it (as jupyter_server does): a browser's
    command line is readable by every local user, the file only by us. Returns the file (removed at exit)."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="labd-ui-", suffix=".html")  # 0600, in the user's temp directory
    page = (f'<!doctype html><meta charset="utf-8"><title>labd</title>'
            f'<script>location.replace({json.dumps(url)})</script><a href="{url}">open the labd dashboard</a>')
    with open(fd, "w") as f:
        f.write(page)
    webbrowser.open(Path(name).as_uri())
    # the browser reads it once, at its start: it is not left behind for the dashboard's whole life either
    remover = threading.Timer(_open_file_s(), Path(name).unlink, kwargs={"missing_ok": True})
    remover.daemon = True  # never what keeps the process alive
    remover.start()
    return Path(name)


def _open_file_s() -> float:
    """:data:`OPEN_FILE_S`, or the test override ``LABD_UI_OPEN_FILE_S`` (seconds; it only shortens the delay)."""
    return shortened(OPEN_FILE_S, "LABD_UI_OPEN_FILE_S")
