"""How an exception reads in the record (a step's or a session's error): ``labd.ipc.errors.describe_exception``."""

from __future__ import annotations

from labd.ipc.errors import describe_exception


class _BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_an_exception_reads_type_and_message_and_a_bare_one_just_its_type() -> None:
    """``Type: message``; an exception raised without a message is just its type (a bare ``KeyboardInterrupt`` read
    ``"KeyboardInterrupt: "``, a dangling colon); one whose ``__str__`` raises says so instead of raising."""
    assert describe_exception(ValueError("bad value")) == "ValueError: bad value"
    assert describe_exception(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert describe_exception(RuntimeError()) == "RuntimeError"
    assert describe_exception(_BrokenStr()) == "_BrokenStr: <_BrokenStr: str() failed: RuntimeError: no text>"
