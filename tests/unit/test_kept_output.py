"""What the record keeps of a program's output: its first and last MiB, the bytes between counted, no cut inside a
secret (runner/agents/kept_output.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from labd.runner.agents.kept_output import KEPT_HEAD, KEPT_TAIL, KeptOutput
from labd.runner.withhold import guard_cuts

SECRET = "sk-THISISASECRETVALUE1234567890"


@pytest.fixture
def guarded() -> Iterator[None]:
    """The session's secret, as the channel's withhold() registers it for cuts."""
    guard_cuts([SECRET])
    yield
    guard_cuts([])


def _kept(data: bytes) -> tuple[str, int]:
    async def run() -> tuple[str, int]:
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        kept = KeptOutput()
        await kept.read(stream)
        return kept.text()
    return asyncio.run(run())


def test_output_within_the_bounds_is_kept_whole_as_text() -> None:
    """Up to KEPT_HEAD + KEPT_TAIL bytes nothing is left out; bytes that are not UTF-8 read as ``\\xNN``."""
    data = b"a" * (KEPT_HEAD + KEPT_TAIL - 4) + b"\xff\xfe\n"
    text, dropped = _kept(data)
    assert dropped == 0 and text == "a" * (KEPT_HEAD + KEPT_TAIL - 4) + "\\xff\\xfe\n"


def test_longer_output_keeps_its_start_and_end_and_counts_the_rest() -> None:
    """Of 5 MiB, the first and last MiB are kept with a line saying how many bytes between them are not, exactly."""
    data = b"h" * (2 << 20) + b"m" * (1 << 20) + b"t" * (2 << 20)
    text, dropped = _kept(data)
    assert dropped == len(data) - KEPT_HEAD - KEPT_TAIL
    assert text == "h" * KEPT_HEAD + f"\n… [{dropped:,} bytes of output not recorded]\n" + "t" * KEPT_TAIL


def test_no_cut_falls_inside_a_secret(guarded: None) -> None:
    """A secret crossing the head's cut is left out whole (the head ends before it), and one crossing the tail's
    start too (the tail begins after it): a piece of one would not be found by the withholding, which replaces
    whole values, and was recorded as it is (a review read ``sk-THISISA`` in a kept head)."""
    half = len(SECRET) // 2
    data = (b"a" * (KEPT_HEAD - half) + SECRET.encode() + b"m" * (3 << 20) + SECRET.encode()
            + b"z" * (KEPT_TAIL - half))
    text, dropped = _kept(data)
    head, _, tail = text.partition(" bytes of output not recorded]\n")
    assert head.startswith("a" * (KEPT_HEAD - half)) and "sk-" not in head and "\n… [" in head
    assert tail == "z" * (KEPT_TAIL - half) and "1234567890" not in tail
    assert dropped == len(data) - (KEPT_HEAD - half) - (KEPT_TAIL - half)
    whole = SECRET + "b" * (3 << 20) + SECRET  # a secret well inside a kept part stays, for the withholding
    text, _ = _kept(("a" * 100 + whole + "z" * 100).encode())
    assert text.startswith("a" * 100 + SECRET) and text.endswith(SECRET + "z" * 100)
