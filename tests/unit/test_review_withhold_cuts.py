"""Text cut short to fit an event field is never cut inside a withheld secret (labd.runner.withhold.head_cut and
tail_start): the channel finds only whole values, so the piece kept would be recorded as it is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from labd.runner import withhold
from labd.runner.channel import Channel
from labd.runner.context import clip
from labd.runner.replay import Replayer

KEY = "sk-cut-Q1w2E3r4T5y6U7i8O9p0"


@pytest.fixture
def guarded() -> Iterator[None]:
    withhold.guard_cuts([KEY, "abcdefghij"])
    yield
    withhold.guard_cuts([])


@pytest.mark.usefixtures("guarded")
def test_clip_never_keeps_a_proper_prefix_of_a_secret_the_text_goes_on_with() -> None:
    """Wherever the 1000-character cut falls inside the key, the clipped text keeps no piece of it and counts the
    rest; a key wholly before the cut is kept (the channel replaces it); overlapping secrets move the cut again."""
    for before in range(1000 - len(KEY) + 1, 1000):
        clipped = clip("n" * before + KEY + "tail", 1000)
        assert KEY[:4] not in clipped and clipped == "n" * before + f"… ({len(KEY) + 4} more)", before
    assert KEY in clip("n" * (1000 - len(KEY)) + KEY + "tail", 1000)
    overlapping = "x" * 990 + "abcdefghij" + KEY  # the cut at 1000 is inside neither, 1003 inside the key
    assert clip(overlapping, 1003).startswith("x" * 990 + "abcdefghij…")


@pytest.mark.usefixtures("guarded")
def test_a_replay_miss_keeps_no_suffix_of_a_secret_across_its_2000_character_window() -> None:
    """The input a replay miss records is the last 2000 characters of the request: a key crossing where that window
    begins is left out whole (its last characters used to be recorded)."""
    sent: list[dict[str, Any]] = []
    replayer = Replayer({}, lambda kind, payload, *a: sent.append(payload) or 1)
    text = "p" * 10 + KEY + "q" * (2000 - len(KEY) // 2)
    replayer._miss("llm", "d" * 64, None, None, text)  # noqa: SLF001 - the payload is what is under test
    assert sent[0]["input"] == "q" * (2000 - len(KEY) // 2)
    assert withhold.tail_start(KEY + KEY, 30) == len(KEY)  # the first crosses the start; the second is kept whole
    assert withhold.tail_start(KEY + KEY, 20) == 2 * len(KEY)  # the second crosses it: nothing of either is kept


def test_the_channel_guards_the_cuts_of_the_values_it_withholds(tmp_path: Any) -> None:
    """Channel.withhold is what arms the guard: the values it looks for (8 characters or more), no others."""
    ch = Channel("ipc:///nonexistent", b"k" * 32, "s1", spool=None)
    try:
        ch.withhold({"API_KEY": KEY, "SHORT": "abc"})
        assert clip("n" * 990 + KEY, 1000) == "n" * 990 + f"… ({len(KEY)} more)"
    finally:
        withhold.guard_cuts([])


@pytest.mark.usefixtures("guarded")
def test_code_output_cut_for_the_model_and_a_result_preview_keep_no_piece_of_a_secret(tmp_path: Any) -> None:
    """The output of ``run_code`` that the model gets back is cut at MAX_OUTPUT characters and ends up in the agent's
    later LLM requests; a checkpoint's result preview is cut at 500: neither cut falls inside a withheld secret (the
    cut moves before it and counts it), while the record of the execution keeps the whole output (the channel
    replaces the secret there)."""
    import asyncio
    import sys

    from labd.runner.agents.code import MAX_OUTPUT, make_run_code
    from labd.runner.durable import _preview
    from labd.runner.files import FileTracker

    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, payload: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        events.append((kind, payload))
        return len(events)

    run_code = make_run_code(emit, tmp_path, FileTracker(tmp_path, emit))
    pad = MAX_OUTPUT - len(KEY) // 2
    got = asyncio.run(run_code(f"import sys; sys.stdout.write('o' * {pad} + {KEY!r} + 'z' * 50)"))
    assert KEY[:6] not in got and got.startswith("o" * pad + "\n… (")
    assert f"({len(KEY) + 50} more characters)" in got
    recorded = [p["output"] for k, p in events if "output" in p and isinstance(p.get("output"), str)]
    assert any(KEY in out for out in recorded), sys.executable  # whole, for the channel to replace
    preview = _preview("r" * 480 + KEY)
    assert KEY[:6] not in preview and preview == "'" + "r" * 480 + "..."  # repr's quote, then the cut



def test_cuts_never_fall_inside_a_run_of_overlapping_secrets() -> None:
    """Two values that overlap (A's end is B's start) and one that overlaps itself (eight dashes, in eleven):
    wherever the limit falls, neither the head kept nor the tail kept is cut inside the run they make, so the
    channel finds every value in the kept text whole or not at all (a cut moved only out of the value it fell in
    would keep a piece of the other)."""
    a, b = "AAAAkey1XYZW", "XYZWmore5678"
    withhold.guard_cuts([a, b, "-" * 8])
    try:
        for pad in range(3):
            text = "h" * pad + a + b[4:] + "t" * pad + "-" * 11
            runs = [(pad, pad + 20), (2 * pad + 20, 2 * pad + 31)]
            for limit in range(len(text) + 1):
                cut, start = withhold.head_cut(text, limit), withhold.tail_start(text, limit)
                assert cut <= limit and len(text) - start <= limit
                for s, e in runs:
                    assert not s < cut < e and not s < start < e, (pad, limit, cut, start)
    finally:
        withhold.guard_cuts([])
