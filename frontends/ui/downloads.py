"""Downloads of a session's files from the dashboard: the file its listing names, opened beneath the session's work
directory without following symlinks, and streamed a piece at a time from that one descriptor (never opened again by
path: nothing the session swaps in meanwhile can lead outside its work directory)."""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse

from labd.frontends.ui.endshort import FileShrank
from labd.ipc.safe_files import UnsafePath, listed_name, open_beneath

__all__ = ["DOWNLOAD_CHUNK", "file_response"]

#: A download is sent in pieces of this many bytes, each read when the last one was handed to the connection (whose
#: buffer holds back the next while the client is slow): the dashboard's memory per download is a piece or two,
#: whatever the file's size. Until 2026-12-02 a file was read whole into memory first, and one over 64 MiB refused.
DOWNLOAD_CHUNK = 256 * 1024


async def file_response(reply: dict[str, Any], sid: str, rel: str, b64: str | None) -> Response:
    """A session's file, as its listing (``reply``: its ``session.files``) names it, streamed from a descriptor
    opened beneath its work directory; 404 for a name the listing lacks or a file gone, 403 ``refused`` for one that
    is no longer a plain file of its own (a symlink, a FIFO, a hard link: perhaps a second name of a file elsewhere)."""
    exact = listed_name(reply["files"], rel, b64)
    if exact is None:
        return JSONResponse({"error": {"code": "not_found", "message": f"no file {rel!r}"}}, status_code=404)

    def opened() -> tuple[BinaryIO, os.stat_result] | str:
        try:  # opened without following symlinks: nothing the session swaps in can lead outside its workdir
            f = open_beneath(Path(reply["workdir"]), exact)
        except UnsafePath as exc:  # a symlink, a FIFO, a hard link (perhaps to a file outside it): said, not "gone"
            return f"refused: {exc}"
        except OSError:
            return "file gone"
        return f, os.fstat(f.fileno())

    got = await anyio.to_thread.run_sync(opened)
    if isinstance(got, str):
        refused = got.startswith("refused")
        return JSONResponse({"error": {"code": "refused" if refused else "not_found", "message": got}},
                            status_code=403 if refused else 404)
    f, st = got

    async def pieces() -> AsyncIterator[bytes]:
        """The file's first ``st_size`` bytes (its size when opened, as Content-Length says), from the fd opened
        above: a growing file is sent as it was, one that shrank meanwhile ends short (:class:`FileShrank`: its
        client sees the length unmet), and no path is opened again."""
        try:
            left = st.st_size
            while left > 0:
                piece = await anyio.to_thread.run_sync(f.read, min(DOWNLOAD_CHUNK, left))
                if not piece:
                    raise FileShrank(f"download of {rel!r} (session {sid}) ended short: the file shrank to "
                                     f"{st.st_size - left} of {st.st_size} bytes while it was sent")
                left -= len(piece)
                yield piece
        finally:
            f.close()

    # FileResponse's headers, but not FileResponse (it reopens the path) and no Range (it would too)
    name = rel.rsplit("/", 1)[-1]
    quoted = quote(name)
    disposition = f'attachment; filename="{name}"' if quoted == name else f"attachment; filename*=utf-8''{quoted}"
    etag = hashlib.md5(f"{st.st_mtime}-{st.st_size}".encode(), usedforsecurity=False).hexdigest()
    return StreamingResponse(pieces(), media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                             headers={"content-disposition": disposition, "etag": f'"{etag}"',
                                      "content-length": str(st.st_size),
                                      "last-modified": formatdate(st.st_mtime, usegmt=True)})
