"""The line guard of `labd mcp`'s stdio transport (frontends/mcp_stdio.py): nesting measured without a parser, the
id of a refused request recovered from its top level, and lines read with bounded memory."""

from __future__ import annotations

import os
import threading

import anyio
import pytest

from labd.frontends import mcp_stdio
from labd.frontends.mcp_stdio import MAX_DEPTH, screen_line, too_deep


def _nest(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def test_nesting_is_measured_outside_strings_whatever_the_bracket_kind() -> None:
    """Depth counts arrays and objects alike, up to and past the limit; brackets inside strings (escaped quotes
    included) do not count."""
    assert not too_deep(_nest(MAX_DEPTH))
    assert too_deep(_nest(MAX_DEPTH + 1))
    mixed = b'{"a":' * 100 + _nest(MAX_DEPTH - 100 + 1) + b"}" * 100
    assert too_deep(mixed)
    assert not too_deep(b'["' + b"[" * 10_000 + b'\\"' + b"{" * 10_000 + b'"]')
    interleaved = b"[1," * (MAX_DEPTH + 1) + b"1" + b"]" * (MAX_DEPTH + 1)  # no long run of brackets
    assert too_deep(interleaved) and not too_deep(b"[1," * MAX_DEPTH + b"1" + b"]" * MAX_DEPTH)


def test_a_refused_request_is_answered_with_its_id_when_its_top_level_shows_it() -> None:
    """The id is found before or after a member nested 100000 levels deep, and in a line cut short; it is null
    when the line is not an object, or the id is not a string or integer."""
    deep = b'{"jsonrpc":"2.0","method":"tools/call","params":' + _nest(100_000) + b',"id":"after"}'
    message, error = screen_line(deep)
    assert message is None and error is not None
    assert error.id == "after" and error.error.code == -32600
    _, cut = screen_line(b'{"jsonrpc":"2.0","id":3,"method":"x","params":{"a":[1,')
    assert cut is not None and cut.id == 3 and cut.error.code == -32700
    for line in (b"[1, 2]", b'{"id": true, "method": 1}', b'{"id": [1], "method": 1}', b"nonsense"):
        _, error = screen_line(line)
        assert error is not None and error.id is None, line


def test_a_broken_response_or_a_blank_line_gets_no_answer_and_good_lines_pass() -> None:
    """A line with `result` or `error` and no `method` is a peer's reply: answering it could loop, so it is dropped;
    blank lines are dropped; a valid message is handed over as parsed."""
    assert screen_line(b'{"jsonrpc":"2.0","id":1,"result":' + _nest(1000) + b"}") == (None, None)
    assert screen_line(b'{"jsonrpc":"2.0","id":1,"error":{') == (None, None)
    assert screen_line(b"  \r") == (None, None)
    message, error = screen_line(b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
    assert error is None and message is not None and message.id == 2  # type: ignore[union-attr]


def test_lines_are_read_with_at_most_the_limit_kept() -> None:
    """Lines split across reads come out whole; a line over the limit comes out as its head only, marked not whole,
    while the buffer never holds more than the limit and one read; a last line without a newline still counts."""
    rfd, wfd = os.pipe()
    limit = 1000
    data = [b'{"a":1}\n', b'{"b":', b"2}\n", b"x" * (50 * limit), b"y\n", b"tail"]

    def feed() -> None:
        with open(wfd, "wb") as f:
            for part in data:
                f.write(part)
                f.flush()

    writer = threading.Thread(target=feed)
    writer.start()
    lines = mcp_stdio._Lines(rfd, limit=limit)  # noqa: SLF001
    seen: list[tuple[bytes, bool]] = []
    biggest = 0

    async def read_all() -> None:
        nonlocal biggest
        while (item := await lines.next()) is not None:
            seen.append(item)
            biggest = max(biggest, len(lines._buf))  # noqa: SLF001

    try:
        anyio.run(read_all)
    finally:
        writer.join()
        os.close(rfd)
    assert seen[:2] == [(b'{"a":1}', True), (b'{"b":2}', True)]
    head, whole = seen[2]
    assert not whole and (b"x" * (50 * limit) + b"y").startswith(head) and limit < len(head) <= mcp_stdio.ID_SCAN
    assert seen[3:] == [(b"tail", True)]
    assert biggest <= limit + mcp_stdio.CHUNK


@pytest.mark.timeout(60)
def test_an_unterminated_string_is_screened_in_linear_time() -> None:
    """A line that opens a string and never closes it, full of escaped quotes, is refused at once: the scans start
    no new match inside a string (retrying from each quote took quadratic time, ~25 s for 80 KB)."""
    for line in (b'{"id":4,"a":"' + b'\\"' * 200_000, b'{"id":4,"a":"' + b'\\"' * 200_000 + b"\\"):
        # no time bound asserted: quadratic scanning of these 400 KB lines takes minutes, past the test's timeout
        _, error = screen_line(line)
        assert error is not None and error.id == 4 and error.error.code == -32700


@pytest.mark.parametrize("rid", [b"1.5", b"null", b"true", b"[1]", b"{}", b"1e999"])
def test_a_request_whose_id_is_not_a_string_or_integer_is_answered_not_taken_for_a_notification(rid: bytes) -> None:
    """A request with an id the SDK's RequestId does not take (a fraction, null, a boolean, an array, an object) parses
    as a notification, which the server never answers (its client would wait forever): it gets an invalid-request
    error with a null id instead; a real notification, even one with an ``id`` inside its params, is handed over."""
    message, error = screen_line(b'{"jsonrpc":"2.0","id":' + rid + b',"method":"tools/list"}')
    assert message is None and error is not None and error.id is None and error.error.code == -32600
    for line in (b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                 b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"id":4}}'):
        message, error = screen_line(line)
        assert error is None and message is not None, line
