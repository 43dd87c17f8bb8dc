"""A file whose name is not UTF-8 beside a file really named as its display form (``bad\\xff.txt``, with a
backslash): the record keeps them apart (``path_b64``), marks each one's own latest row current, and the dashboard
and the MCP server serve each as itself. Before, the files table kept only the display form: the deletion of one
file made the other look deleted, and both front-ends served the literally named file for the other (or nothing).
Real daemon, real session, real `labd ui` process; headless Chromium where the page builds the link."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client as McpClient

from labd.frontends.mcp import build_server
from tests.integration.test_ui_robust import CHROMIUM, Ui, browser_page, shared_ui  # noqa: F401 - the fixture

BYTES_NAME = b"bad\xff.txt"
SHOWN = "bad\\xff.txt"  # the display form of BYTES_NAME, and the name of the other file
B64 = base64.b64encode(BYTES_NAME).decode()

#: step one writes both files; step two deletes the literally named one and writes it again under "gone/"
_FLOW = """\
import os

def names(ctx):
    w = os.fsencode(ctx.workdir)
    with ctx.step("one"):
        with open(os.path.join(w, b"bad\\xff.txt"), "wb") as f:
            f.write(b"the bytes-named file")
        (ctx.workdir / "bad\\\\xff.txt").write_text("the backslash-named file")
    with ctx.step("two"):
        (ctx.workdir / "bad\\\\xff.txt").unlink()
        (ctx.workdir / "kept.txt").write_text("kept")
    return "ok"
"""


@pytest.fixture
def session(shared_daemon, tmp_path: Path) -> str:
    """The completed session of :data:`_FLOW`, on the module's daemon."""
    (tmp_path / "names_flow.py").write_text(_FLOW)
    with shared_daemon.client() as c:
        sid = c.start(f"{tmp_path / 'names_flow.py'}:names")
        row = c.wait(sid, timeout=90)
    assert row["status"] == "completed", row["reason"]
    return str(sid)


def _rows(files: list[dict[str, Any]]) -> list[tuple[str, str | None, str, bool]]:
    return [(f["path"], f["path_b64"], f["change"], f["current"]) for f in files if f["path"].startswith("bad")]


def test_the_record_keeps_the_two_files_apart(shared_daemon, session: str) -> None:
    """`session.files` lists the bytes-named file with its ``path_b64`` and the other without; the deletion of the
    backslash-named file leaves the bytes-named one current (it was marked deleted too, both keyed by display)."""
    with shared_daemon.client() as c:
        files = c.files(session)
    rows = _rows(files)
    assert sorted(rows, key=repr) == sorted([(SHOWN, B64, "created", True), (SHOWN, None, "created", False),
                                             (SHOWN, None, "deleted", False)], key=repr), rows
    assert rows[-1] == (SHOWN, None, "deleted", False)  # step two's


def test_the_dashboard_serves_each_file_as_itself(shared_daemon, shared_ui: Ui, session: str) -> None:  # noqa: F811
    """`GET /api/sessions/S/files/bad%5Cxff.txt?b64=...` serves the bytes-named file; without ``b64`` the path
    names only the backslash-named file, which is deleted: 404 ("file gone"), never the other file. A ``b64`` no
    listed file has is a 404, an unknown query parameter a 400."""
    url = f"/api/sessions/{session}/files/{urllib.parse.quote(SHOWN)}"
    status, body = shared_ui.request(f"{url}?b64={urllib.parse.quote(B64)}")
    assert (status, body) == (200, b"the bytes-named file")
    status, body = shared_ui.request(url)
    assert status == 404 and b"the bytes-named file" not in body, body
    other = urllib.parse.quote(base64.b64encode(b"bad\xfe.txt").decode())
    assert shared_ui.request(f"{url}?b64={other}")[0] == 404
    status, body = shared_ui.request(f"{url}?b46={urllib.parse.quote(B64)}")
    assert status == 400 and b"b46" in body, body


@pytest.mark.timeout(180)
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_the_page_downloads_the_bytes_named_file(shared_daemon, shared_ui: Ui, session: str) -> None:  # noqa: F811
    """The files tab's link of the bytes-named file downloads that file (the page asks by ``path_b64``)."""
    with browser_page(shared_ui) as page:
        page.goto(f"{shared_ui.base}/#/s/{session}")
        page.click("#tab-files")
        links = page.locator("#files tbody tr a").filter(has_text=SHOWN)
        links.first.wait_for()
        assert links.count() == 3  # the bytes-named file's row, the other file's creation and its deletion
        (bytes_link,) = [a for a in links.all() if "b64=" in (a.get_attribute("href") or "")]
        with page.expect_download() as dl:
            bytes_link.click()
        assert Path(dl.value.path()).read_bytes() == b"the bytes-named file"


def test_the_mcp_server_reads_each_file_by_its_uri(shared_daemon, session: str) -> None:
    """The MCP files listing gives the bytes-named file a ``file-bytes`` URI (its bytes, URL-safe base64), which
    reads it; the ``file/`` URI of the display path names only the backslash-named file (deleted: an error, not
    the other file's content)."""
    server = build_server(shared_daemon.home)

    async def go() -> tuple[list[dict[str, Any]], Any, Exception | None]:
        async with McpClient(server) as c:
            listing = json.loads((await c.read_resource(f"labd://sessions/{session}/files")).contents[0].text)["files"]
            (bytes_named,) = [f for f in listing if f["path_b64"] == B64]
            read = await c.read_resource(bytes_named["uri"])
            try:
                await c.read_resource(f"labd://sessions/{session}/file/{urllib.parse.quote(SHOWN)}")
                refused = None
            except Exception as exc:  # noqa: BLE001 - the SDK raises its own error type
                refused = exc
            return listing, read, refused

    listing, read, refused = anyio.run(go)
    assert sorted(f["uri"].rsplit("/", 2)[-2] for f in listing if f["path"] == SHOWN) == ["file", "file", "file-bytes"]
    content = read.contents[0]
    assert getattr(content, "text", None) == "the bytes-named file", content
    assert refused is not None and "the bytes-named file" not in str(refused)
