"""The stdio transport of `labd mcp`: the MCP SDK's stdio transport, with a guard on every line it reads.

The SDK's own transport (``mcp.server.stdio``) reads stdin a line at a time, of any length, and hands each line to
its parser; a line the parser refuses (not JSON, not a JSON-RPC message, or nested deeper than the parser's recursion
limit of about 200 levels) is dropped without a reply, and the client waits forever for the answer to that request.
This transport hands the server the same streams, and:

* keeps at most :data:`MAX_LINE` bytes of a line (the daemon reads no larger request): the rest of a longer line is
  read and thrown away as it arrives, so memory stays bounded whatever a client sends;
* measures a line's nesting without a parser (brackets outside strings, at C speed) and refuses one nested deeper
  than :data:`MAX_DEPTH` levels before any parser sees it;
* answers every line it cannot hand over with a JSON-RPC error: ``-32700`` (parse error) for text that is not JSON,
  ``-32600`` (invalid request) for a line too large, too deep, or not a JSON-RPC message. The reply carries the
  request's ``id`` when the line's top level shows it (read without parsing the nested members, within the first
  :data:`ID_SCAN` bytes), ``null`` otherwise, as JSON-RPC asks. A line that looks like a response (``result`` or
  ``error``, no ``method``) is dropped unanswered as before: answering a peer's reply could start an endless exchange;
* goes on with the next line.

Like the SDK's transport it moves the wire off the standard descriptors while serving (fd 0 reads ``/dev/null``, fd 1
writes to stderr), so nothing else in the process reads protocol bytes or writes stray ones into the stream.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from itertools import accumulate
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from labd.ipc.wire import DEFAULT_MAX_MESSAGE

__all__ = ["MAX_DEPTH", "MAX_LINE", "guarded_stdio_server", "screen_line", "too_deep"]

#: bytes of one message line; a longer line is answered with an error and not kept (the daemon's request limit)
MAX_LINE = DEFAULT_MAX_MESSAGE
#: levels of nesting of one message, its envelope included (the SDK's parser gives up near 200)
MAX_DEPTH = 128
#: bytes at the start of a refused line searched for its id
ID_SCAN = 1 << 18
CHUNK = 1 << 16

# A JSON string, escapes included, or an unterminated one to the end of the text: a match from every quote, so a scan
# never restarts inside a string (retrying an unterminated one from each of its quotes would take quadratic time).
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)'
_STRINGS = re.compile(_STRING)
_TOKEN = re.compile(_STRING + rb"|[\[{]+|[\]}]+|[,:]")  # a run of opening (or closing) brackets is one token
_OBJECT_START = re.compile(rb"\s*\{")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_STEP = [0] * 256
_STEP[ord("[")], _STEP[ord("]")] = 1, -1
_NESTED = object()  # a top-level member whose value is an array or object (never parsed)
_INVALID = object()  # a top-level member whose value is not JSON

Screened = tuple[types.JSONRPCMessage | None, types.JSONRPCError | None]
ServerStreams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


def too_deep(text: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON ``text`` nests deeper than ``limit`` levels (brackets inside strings do not count), decided
    without recursion or parsing, at C speed for the usual shapes."""
    brackets = _STRINGS.sub(b"", text).translate(_ONE_KIND, _NOT_BRACKET)  # only [ and ]: depth is all that counts
    if len(brackets) <= limit:
        return False
    if b"[" * (limit + 1) in brackets:
        return True
    return max(accumulate(map(_STEP.__getitem__, brackets))) > limit


def screen_line(line: bytes, whole: bool = True) -> Screened:
    """What to do with one line from the client: ``(message, None)`` hands the message to the server, ``(None,
    error)`` answers the client with the error, ``(None, None)`` drops the line (blank, or a bad response).

    ``whole`` is False when ``line`` is only the start of a line longer than :data:`MAX_LINE`."""
    if not whole:
        return _refuse(line, types.INVALID_REQUEST, f"Invalid Request: message longer than {MAX_LINE} bytes")
    if not line.strip():
        return None, None
    if too_deep(line):
        return _refuse(line, types.INVALID_REQUEST, f"Invalid Request: message nested deeper than {MAX_DEPTH} levels")
    try:
        message = types.jsonrpc_message_adapter.validate_json(line.decode("utf-8", "replace"), by_name=False)
    except ValidationError as exc:
        not_json = [e["msg"] for e in exc.errors() if e["type"] == "json_invalid"]
        if not_json:
            return _refuse(line, types.PARSE_ERROR, f"Parse error: {not_json[0]}")
        return _refuse(line, types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
    # A request whose id is neither a string nor an integer (1.5, null, true, [1]) parses as a notification (the id is
    # an extra member): the server would never answer it and its client would wait forever
    if isinstance(message, types.JSONRPCNotification) and b'"id"' in line[:ID_SCAN] and "id" in _top_level(
            line[:ID_SCAN]):
        return _refuse(line, types.INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    return message, None


def _refuse(line: bytes, code: int, message: str) -> Screened:
    members = _top_level(line[:ID_SCAN])
    if "method" not in members and ("result" in members or "error" in members):
        return None, None
    rid = members.get("id")
    if not isinstance(rid, str) and (not isinstance(rid, int) or isinstance(rid, bool)):
        rid = None
    return None, types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))


def _top_level(text: bytes) -> dict[str, Any]:
    """The members of the JSON object ``text`` at its top level, read without parsing anything nested below it: a
    scalar member maps to its value, an array or object to ``_NESTED``. Tolerant: a truncated or malformed text
    gives the members read up to where it breaks off (nothing if it is not an object)."""
    members: dict[str, Any] = {}
    start = _OBJECT_START.match(text)
    if start is None:
        return members
    depth, value_at, nested = 1, 0, False
    key: str | None = None  # the member whose value is being read
    name: Any = None  # the last string read where a member's name goes
    for m in _TOKEN.finditer(text, start.end()):
        token = m.group()
        opening, closing = token[0] in b"[{", token[0] in b"]}"
        if opening:
            depth += len(token)
            nested = True
        elif closing and depth - len(token) >= 1:
            depth -= len(token)
        elif depth > 1:
            continue
        elif token == b":":
            key, value_at, nested = name if isinstance(name, str) else None, m.end(), False
            if key is not None:
                members.setdefault(key, _INVALID)  # present, even if its value breaks off
        elif token == b"," or closing:  # the end of a member; closers that get past depth 1 end the object too
            if key is not None:
                members[key] = _NESTED if nested else _scalar(text[value_at:m.start()])
            key = name = None
            if closing or ("id" in members and "method" in members):
                break
        elif key is None:  # a string where a member's name goes
            name = _scalar(token)
    return members


def _scalar(text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _INVALID


class _Lines:
    """The lines of the byte stream on ``fd``, read in a worker thread; at most ``limit`` bytes of a line are kept."""

    def __init__(self, fd: int, limit: int = MAX_LINE) -> None:
        self._fd, self._limit = fd, limit
        self._buf = bytearray()
        self._searched = 0  # bytes at the start of _buf known to hold no newline
        self._head: bytes | None = None  # the start of a line over the limit, while the rest of it is dropped
        self._eof = False

    async def next(self) -> tuple[bytes, bool] | None:
        """The next line without its newline and whether it is whole (False: the first :data:`ID_SCAN` bytes of a
        line over the limit, the rest of which was read and dropped); None at the end of the stream."""
        while True:
            end = self._buf.find(b"\n", self._searched)
            if end < 0 and self._eof:
                if not self._buf and self._head is None:
                    return None
                end = len(self._buf)  # a last line without a newline
            if end >= 0:
                head, self._head = self._head, None
                if head is None and end > self._limit:  # the whole line came in with the read that ended it
                    head = bytes(self._buf[:min(end, ID_SCAN)])
                if head is None:
                    with memoryview(self._buf) as view:
                        line = bytes(view[:end])
                del self._buf[:end + 1]
                self._searched = 0
                return (line, True) if head is None else (head, False)
            self._searched = len(self._buf)
            if len(self._buf) > self._limit:
                if self._head is None:
                    self._head = bytes(self._buf[:ID_SCAN])
                self._buf.clear()
                self._searched = 0
            chunk = await anyio.to_thread.run_sync(os.read, self._fd, CHUNK, abandon_on_cancel=True)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True


def _claim(fd: int, diversion: int) -> tuple[int, Callable[[], None]]:
    """Move the wire on ``fd`` to a private descriptor, point ``fd`` at ``diversion`` (which is closed), and return the
    private descriptor and a function that puts the wire back. The private descriptor is never closed: a worker
    thread may still be blocked reading it when serving ends, and must not be handed a recycled descriptor."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        os.dup2(diversion, fd)
    finally:
        os.close(diversion)

    def restore() -> None:
        with suppress(OSError):
            os.dup2(private, fd)

    return private, restore


@asynccontextmanager
async def guarded_stdio_server() -> AsyncIterator[ServerStreams]:
    """Serve MCP over the process's stdin and stdout: the streams to hand to the server's ``run``, as the SDK's
    ``stdio_server()`` yields them, with every line read screened by :func:`screen_line`."""
    wire_in, restore_in = _claim(0, os.open(os.devnull, os.O_RDONLY))
    try:
        wire_out, restore_out = _claim(1, os.dup(2))
    except BaseException:
        restore_in()
        raise
    try:
        to_server, from_client = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        to_client, from_server = anyio.create_memory_object_stream[SessionMessage](0)
        out = anyio.wrap_file(os.fdopen(wire_out, "wb", closefd=False))

        async def read(replies: MemoryObjectSendStream[SessionMessage]) -> None:
            lines = _Lines(wire_in)
            async with to_server, replies:
                while (item := await lines.next()) is not None:
                    message, error = screen_line(*item)
                    try:
                        if message is not None:
                            await to_server.send(SessionMessage(message))
                        elif error is not None:
                            await replies.send(SessionMessage(error))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the server stopped listening

        async def write() -> None:
            async with from_server:
                async for item in from_server:
                    frame = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await out.write(frame.encode() + b"\n")
                    await out.flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, to_client.clone())
            tg.start_soon(write)
            yield from_client, to_client
    finally:
        restore_out()
        restore_in()
