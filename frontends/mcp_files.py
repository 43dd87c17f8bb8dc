"""A session's files through `labd mcp`: as resources (a listing and one per file, for clients that read resources)
and as tools (``list_files``, ``read_file``: paged, for the many clients whose model cannot read resources itself).

Files are opened beneath the session's work directory without following links (:func:`open_beneath`), and only
files the record lists. A file's text comes in pieces cut on character boundaries; a piece that is not text comes as
base64. Nothing is cut without saying so."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import Field

from labd.frontends.mcp_read import DEFAULT_TEXT, MAX_RESULT, MAX_TEXT, READ_ONLY, fit_text, text_chars
from labd.ipc.client import Client
from labd.ipc.safe_files import listed_name, open_beneath, path_bytes

__all__ = ["register_files", "listing", "MAX_FILE", "FILES_PAGE"]

MAX_FILE = 1_000_000  # bytes of a file returned as a resource (read_file pages through the rest)
FILES_PAGE = 200  # files list_files returns unless asked for fewer or more (at most 1000)
_KEYS = ("path", "path_b64", "size", "sha256", "kind", "step", "agent", "change", "restored")

Call = Callable[..., Awaitable[Any]]


def register_files(server: MCPServer, call: Call) -> None:
    """Add the file resources and tools to ``server``; ``call(fn, bounded_by=...)`` runs ``fn`` on a client (the
    server's own: :func:`labd.frontends.mcp.build_server`)."""

    @server.tool(annotations=READ_ONLY)
    async def list_files(session: str, offset: Annotated[int, Field(ge=0)] = 0,
                         limit: Annotated[int, Field(ge=1, le=1000)] = FILES_PAGE) -> dict[str, Any]:
        """The files a session wrote (its record's file history, in order): path, size in bytes, sha256, the step
        and agent that wrote it, change (created, modified, deleted). `offset`/`limit` page through them; `total`:
        how many there are. Read one with read_file."""
        def listed(c: Client) -> dict[str, Any]:
            files = c.files(session)
            page = [{k: f.get(k) for k in _KEYS if f.get(k) is not None} for f in files[offset:offset + limit]]
            return {"files": page, "total": len(files), "more": offset + limit < len(files)}
        return await call(listed, bounded_by="ask for fewer with limit")  # type: ignore[no-any-return]

    @server.tool(annotations=READ_ONLY)
    async def read_file(session: str, path: str, offset: Annotated[int, Field(ge=0, le=2**62)] = 0,
                        max_chars: Annotated[int, Field(ge=1000, le=MAX_TEXT)] = DEFAULT_TEXT,
                        path_b64: str | None = None) -> dict[str, Any]:
        """A piece of one file the session wrote, as text, from byte `offset`: {text (or base64, for bytes that are
        not UTF-8 text), size (the file's bytes), next_offset, more}. Call again with offset=next_offset while
        `more`. At most `max_chars` characters a call (as you read them: escapes counted). An offset inside a
        character starts at the next one (`offset` says where). `path_b64`: as list_files gives it, for a name that
        is not UTF-8."""
        def read(c: Client) -> dict[str, Any]:
            reply = c.request("session.files", session=session)
            exact = listed_name(reply["files"], path, path_b64)
            if exact is None:
                raise ToolError(f"labd: session {session} has no file {path!r} (list_files lists them) [not_found]")
            start = offset
            try:
                with open_beneath(Path(reply["workdir"]), exact) as f:
                    size = os.fstat(f.fileno()).st_size
                    if offset > size:
                        raise ToolError(f"labd: offset {offset} is past the end of {path!r} ({size} bytes) "
                                        "[bad_request]")
                    f.seek(offset)
                    data = f.read(max_chars)
            except FileNotFoundError:
                raise ToolError(f"labd: file {path!r} is not in the work directory any more [gone]") from None
            except OSError as exc:  # a link or special file put in its place: not followed, not read
                raise ToolError(f"labd: {path!r} cannot be read as a regular file of the work directory "
                                f"({exc.strerror or exc}) [refused]") from None
            lead = _continuation(data)  # an offset inside a character: start at the next one
            data, start = data[lead:], offset + lead
            text, used = _text_of(data, start + len(data) < size)
            piece: dict[str, Any]
            if text is None:
                used = min(len(data), max_chars * 3 // 4)  # base64: 4 characters for 3 bytes
                piece = {"base64": base64.b64encode(data[:used]).decode("ascii")}
            else:
                if text_chars(text) > max_chars:  # escapes (a NUL is six characters) counted as the model reads
                    text = fit_text(text, max_chars)
                    used = len(text.encode())
                piece = {"text": text}
            end = start + used
            return {"path": path, **piece, "offset": start, "size": size, "next_offset": end, "more": end < size}
        return await call(read, bounded_by=None)  # type: ignore[no-any-return]

    @server.resource("labd://sessions/{session}/files", mime_type="application/json")
    async def session_files(session: str) -> str:
        """The files a session wrote: ``{files, total, more}``, each file with its path, size, sha256, the step and
        agent that wrote it, ``restored`` (put in place by a resume's or branch's restore of a checkpoint, not by a
        step), ``path_b64`` (a name that is not UTF-8: its bytes; ``path`` is then its display form), and the
        ``uri`` to read it by. The first files whose listing fits in 200,000 characters; ``more``: there are
        ``total``, and the list_files tool pages through them all."""
        try:
            files = await call(lambda c: c.files(session), bounded_by=None)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None
        return listing(session, files)

    @server.resource("labd://sessions/{session}/file/{+path}")
    async def session_file(session: str, path: str) -> str | bytes:
        """One file of a session's work directory (only files the record lists; text or bytes). Its first 1,000,000
        bytes: text cut there ends with a line saying so (the read_file tool pages through the rest)."""
        return await _read_resource(call, session, path, None)

    @server.resource("labd://sessions/{session}/file-bytes/{name}")
    async def session_file_bytes(session: str, name: str) -> str | bytes:
        """One file of a session's work directory whose name is not UTF-8, named by its bytes (URL-safe base64;
        the files listing gives each such file's ``uri``)."""
        try:
            raw = base64.urlsafe_b64decode(name.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ResourceError(f"not a file name in URL-safe base64: {name[:60]!r}") from None
        return await _read_resource(call, session, raw.decode("utf-8", "backslashreplace"),
                                    base64.b64encode(raw).decode("ascii"))


def listing(session: str, files: list[dict[str, Any]], most: int = MAX_RESULT) -> str:
    """The files resource's text: the first ``files`` whose JSON fits in ``most`` characters (a session of 10,000
    files listed whole was 2.9 million characters, more than any model's context), and how many there are."""
    listed: list[str] = []
    used = 0
    for f in files:
        item = json.dumps({k: f.get(k) for k in _KEYS} | {"uri": file_uri(session, f)})
        if used + len(item) + 2 > most - 100:  # room for the brackets and the totals
            break
        listed.append(item)
        used += len(item) + 2
    return (f'{{"files": [{", ".join(listed)}], "total": {len(files)}, '
            f'"more": {"true" if len(listed) < len(files) else "false"}}}')


def _continuation(data: bytes) -> int:
    """How many UTF-8 continuation bytes ``data`` starts with, at most 3 (a fourth is not text: decoding says so)."""
    n = 0
    while n < min(3, len(data)) and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def _text_of(data: bytes, cut: bool) -> tuple[str | None, int]:
    """``(text, bytes used)`` of a file's piece ``data``; ``cut``: the file goes on after it, so a character it ends
    inside is left for the next piece (it was served as bytes). ``(None, 0)``: not UTF-8 text."""
    try:
        return data.decode(), len(data)
    except UnicodeDecodeError as exc:
        if cut and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            return data[:exc.start].decode(), exc.start
        return None, 0


async def _read_resource(call: Call, session: str, path: str, path_b64: str | None) -> str | bytes:
    def read(c: Client) -> str | bytes:
        reply = c.request("session.files", session=session)
        exact = listed_name(reply["files"], path, path_b64)
        if exact is None:
            raise ResourceError(f"session {session} has no file {path!r}")
        try:  # opened without following symlinks: nothing the session swaps in can lead outside its workdir
            with open_beneath(Path(reply["workdir"]), exact) as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(MAX_FILE)
        except OSError:
            raise ResourceError(f"file {path!r} is not in the work directory any more") from None
        text, used = _text_of(data, len(data) < size)
        if text is None:
            return data
        if used < size:  # a model reading this must not take the start for the whole file
            text += (f"\n[labd: the first {used:,} of the file's {size:,} bytes; read_file(session, path, "
                     f"offset={used}) reads on]\n")
        return text
    try:
        return await call(read, bounded_by=None)  # type: ignore[no-any-return]
    except ToolError as exc:
        raise ResourceError(str(exc)) from None


def file_uri(session: str, f: dict[str, Any]) -> str:
    """The resource URI a listed file is read by: its path percent-encoded (a resource URI's path is decoded when it
    is read, so ``q?.txt`` or ``x%41.txt`` written as they are would name another file, or none), or, for a name
    that is not UTF-8, its bytes (its path is a display form, which a file really named so shares)."""
    where = f"labd://sessions/{quote(session, safe='')}"
    if f.get("path_b64"):
        raw = path_bytes(f["path_b64"]) or b""  # a damaged record's: a URI that reads nothing
        return f"{where}/file-bytes/{base64.urlsafe_b64encode(raw).decode('ascii')}"
    return f"{where}/file/{quote(f['path'], safe='/')}"
