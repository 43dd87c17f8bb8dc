"""`labd ui` downloads of large files: a real daemon and a real `labd ui` process, plain HTTP."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.test_ui_robust import running_ui
from tests.support.procmem import memory_mb, reset_peak

BIG_FLOWS = """
import os


def big(ctx, mib: int = 1):
    block = os.urandom(1_000_003)  # a period that is no multiple of a piece: a piece out of place shows
    with open(f"big-{mib}.bin", "wb") as f:
        left = mib * 1024 * 1024
        while left > 0:
            f.write(block[:left])
            left -= len(block)
    return mib
"""


def _slow_download(port: int, token: str, path: str, pause: float) -> tuple[int, bytes, str]:
    """GET ``path`` over a raw socket, reading nothing for ``pause`` seconds after sending the request (a slow
    client), then everything: (status, headers, sha256 of the body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                  "Connection: close\r\n\r\n".encode())
        time.sleep(pause)
        raw = bytearray()
        while b"\r\n\r\n" not in raw:
            raw += s.recv(65536)
        head, _, rest = bytes(raw).partition(b"\r\n\r\n")
        digest = hashlib.sha256(rest)
        while piece := s.recv(1 << 20):
            digest.update(piece)
    return int(head.split()[1]), head, digest.hexdigest()


@pytest.mark.timeout(300)
def test_a_large_download_is_streamed_in_bounded_pieces(shared_daemon, tmp_path: Path) -> None:
    """A session's file is downloaded with its exact bytes and its Content-Length, sent in pieces: `labd ui`'s peak
    memory grows by far less than the file (under 16 MiB for 48 MiB, with a client that reads nothing for a second
    first: the connection's buffer holds the next piece back), and a file over the 64 MiB that used to be refused
    (100 MiB) is served too. Before, a file was read whole into memory (the peak grew by its size) and one over
    64 MiB was a 404."""
    flows = tmp_path / "bigflows.py"
    flows.write_text(BIG_FLOWS)
    with shared_daemon.client() as c:
        sids = {mib: c.start(f"{flows}:big", params={"mib": mib}) for mib in (48, 100)}
        workdirs = {}
        for mib, sid in sids.items():
            assert c.wait(sid, timeout=120)["status"] == "completed"
            workdirs[mib] = Path(c.request("session.files", session=sid)["workdir"])
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        assert ui.request("/api/status")[0] == 200  # warmed up: the first request's imports are not counted
        for mib, sid in sids.items():
            name = f"big-{mib}.bin"
            expected = hashlib.sha256((workdirs[mib] / name).read_bytes()).hexdigest()
            reset_peak(ui.proc.pid)
            before = memory_mb(ui.proc.pid)
            status, head, digest = _slow_download(ui.port, ui.token, f"/api/sessions/{sid}/files/{name}", pause=1.0)
            grew_mib = memory_mb(ui.proc.pid, "VmHWM") - before
            assert status == 200, head
            assert f"content-length: {mib * 1024 * 1024}".encode() in head.lower()
            assert digest == expected, f"{name}: the bytes differ"
            assert grew_mib < 16, f"{name}: labd ui's peak memory grew by {grew_mib:.0f} MiB"
        # a client that goes away mid-download: the file is closed, no traceback, the dashboard serves on
        with socket.create_connection(("127.0.0.1", ui.port), timeout=30) as s:
            s.sendall(f"GET /api/sessions/{sids[100]}/files/big-100.bin HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\n"
                      f"Authorization: Bearer {ui.token}\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")

        def open_files() -> list[str]:
            fds = Path(f"/proc/{ui.proc.pid}/fd")
            return [t for t in (_readlink(p) for p in fds.iterdir()) if t.endswith(".bin")]
        wait_until(lambda: not open_files(), timeout=10)
        assert ui.request("/api/status")[0] == 200
        assert "Traceback" not in ui.stderr()


def _big_session(daemon, tmp_path: Path, mib: int) -> tuple[str, Path]:
    """A completed session that wrote ``big-<mib>.bin`` (``mib`` MiB): its id and work directory."""
    flows = tmp_path / "bigflows.py"
    flows.write_text(BIG_FLOWS)
    with daemon.client() as c:
        sid = c.start(f"{flows}:big", params={"mib": mib})
        assert c.wait(sid, timeout=120)["status"] == "completed"
        return sid, Path(c.request("session.files", session=sid)["workdir"])


def _readlink(p: Path) -> str:
    try:
        return str(p.readlink())
    except OSError:  # closed meanwhile
        return ""


@pytest.mark.timeout(300)
def test_a_file_that_shrinks_while_it_is_sent_ends_the_download_short(shared_daemon, tmp_path: Path) -> None:
    """A file the session truncates while a client is downloading it: the download ends short of its
    Content-Length (the connection closes: a client sees the transfer incomplete, never a shorter file passed off as
    whole), `labd ui` says so in one line naming the file (and nothing else: no traceback, no uvicorn follow-up
    line), and serves on."""
    sid, workdir = _big_session(shared_daemon, tmp_path, 32)
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        with socket.create_connection(("127.0.0.1", ui.port), timeout=60) as s:
            s.sendall(f"GET /api/sessions/{sid}/files/big-32.bin HTTP/1.1\r\nHost: 127.0.0.1:{ui.port}\r\n"
                      f"Authorization: Bearer {ui.token}\r\nConnection: close\r\n\r\n".encode())
            raw = bytearray()
            while b"\r\n\r\n" not in raw:
                raw += s.recv(65536)
            # the first pieces are on their way; the connection's buffers hold the rest back while nothing is read
            (workdir / "big-32.bin").write_bytes(b"")
            while piece := s.recv(1 << 20):
                raw += piece
        head, _, body = bytes(raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert f"content-length: {32 * 1024 * 1024}".encode() in head.lower()
        assert len(body) < 32 * 1024 * 1024, "the download must not look complete"
        wait_until(lambda: "big-32.bin" in ui.stderr(), timeout=10)
        assert "Traceback" not in ui.stderr(), ui.stderr()
        assert "shrank" in ui.stderr(), ui.stderr()
        # one line says it all: not uvicorn's "ASGI callable returned without completing response." after it
        assert [line for line in ui.stderr().splitlines() if line.strip()] == [
            next(line for line in ui.stderr().splitlines() if "shrank" in line)], ui.stderr()
        assert ui.request("/api/status")[0] == 200


def test_a_download_ticket_streams_the_file_once_without_the_token(shared_daemon, tmp_path: Path) -> None:
    """The page asks for a one-time link (with its token) and the browser downloads the file by it, saving as it
    streams in: the link serves the file's exact bytes without the token, once; a used, unknown or foreign-host
    request is refused; asking for a link needs the token. Before, the page fetched the file with the token and held
    it whole in its memory before saving (a 1.5 GiB file: +1.5 GiB and 8 s with no feedback; UI review)."""
    import json
    import urllib.request

    sid, workdir = _big_session(shared_daemon, tmp_path, 2)
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        ask = json.dumps({"session": sid, "path": "big-2.bin"}).encode()
        status, body = ui.request("/api/tickets", ask)
        assert status == 200, body
        url = json.loads(body)["url"]
        with urllib.request.urlopen(ui.base + url, timeout=60) as r:  # no Authorization header
            assert r.status == 200 and r.read() == (workdir / "big-2.bin").read_bytes()
        for again in (url, "/api/download/not-a-ticket"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(ui.base + again, timeout=30)
            assert err.value.code == 404
        tid = json.loads(ui.request("/api/tickets", ask)[1])["url"]
        foreign = urllib.request.Request(ui.base + tid, headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(foreign, timeout=30)
        assert err.value.code == 403
        anonymous = urllib.request.Request(ui.base + "/api/tickets", data=ask,
                                           headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(anonymous, timeout=30)
        assert err.value.code == 403
        # the header's light read: no steps, no history (a long session's were a megabyte every 2 s)
        light = json.loads(ui.request(f"/api/sessions/{sid}?steps=0")[1])
        assert light["id"] == sid and light["steps"] == [] and light["history"] == []


def test_a_head_request_does_not_use_a_download_ticket_up(shared_daemon, tmp_path: Path) -> None:
    """A HEAD of a ticket's link (a link checker, a prefetch) is refused without using the ticket: the GET after it
    still downloads the file (retest of the UI review: a HEAD used it up)."""
    import json
    import urllib.request

    sid, workdir = _big_session(shared_daemon, tmp_path, 1)
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        url = ui.base + json.loads(ui.request("/api/tickets", json.dumps({"session": sid,
                                                                           "path": "big-1.bin"}).encode())[1])["url"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30)
        assert err.value.code == 405
        with urllib.request.urlopen(url, timeout=60) as r:
            assert r.read() == (workdir / "big-1.bin").read_bytes()


def test_a_file_that_became_a_hard_link_is_refused_saying_so_and_a_gone_one_is_gone(shared_daemon,
                                                                                   tmp_path: Path) -> None:
    """A listed file replaced by a hard link (a second name of a file that may live outside the work directory:
    the session's code can ``link()`` one it can reach) is refused, 403 ``refused`` naming the hard links, not
    answered "file gone" as an attack review found; a file really gone is still a 404."""
    import json

    sid, workdir = _big_session(shared_daemon, tmp_path, 1)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the session's")
    (workdir / "big-1.bin").unlink()
    (workdir / "big-1.bin").hardlink_to(outside)
    with running_ui(shared_daemon.home, tmp_path / "ui-stderr.log") as ui:
        status, body = ui.request(f"/api/sessions/{sid}/files/big-1.bin")
        assert status == 403, body
        error = json.loads(body)["error"]
        assert error["code"] == "refused" and "hard links" in error["message"], error
        (workdir / "big-1.bin").unlink()
        status, body = ui.request(f"/api/sessions/{sid}/files/big-1.bin")
        assert status == 404 and json.loads(body)["error"]["message"] == "file gone", body
