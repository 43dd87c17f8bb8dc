"""A workflow that pauses longer than the capture's hold (``HOLD_S``) in the middle of printing a secret: the held
start of the secret leaves on its own, and the rest comes in a later chunk that does not hold the whole value. The
start leaves as a mark when it is at least ``MIN_WITHHELD`` characters long, and the stream watches for the rest,
which is withheld when it comes (labd.runner.withhold.StreamWithholder.split_watched, OutputCapture._out).

Most tests drive one ``OutputCapture``'s per-stream path in process, as its reader does (each chunk through
``_out``; a hold that expires, or the stream's end, through ``_out(..., final=True)``), with no pipes or timing; the
last one runs a real capture in a child process whose workflow sleeps 1.5 s mid-secret."""

from __future__ import annotations

import random
import re

from labd.runner.capture import HOLD_S, OutputCapture, _Stream
from labd.runner.withhold import MIN_WITHHELD, StreamWithholder, mark
from tests.unit.test_capture_withhold import as_recorded, run_capture

KEY = "sk-pause-Q7w6E5r4T3y2U1i0O9p8A7s6D5f4G3x"  # 40 characters, no 8 of them twice
M = mark("PAUSE_KEY")


class Streams:
    """stdout and stderr of one capture, fed as its reader feeds them; what each stream recorded so far."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.chunks: list[tuple[str, str]] = []
        self.capture = OutputCapture(lambda stream, text: self.chunks.append((stream, text)))
        withholder = StreamWithholder.of(secrets)
        self.streams = {name: _Stream(name, i, withholder) for i, name in enumerate(("stdout", "stderr"))}

    def feed(self, text: str, stream: str = "stdout") -> None:
        """The next chunk of ``stream`` (a line, or a partial line after its 100 ms)."""
        self.capture._out(self.streams[stream], text)

    def expire(self, stream: str = "stdout") -> None:
        """HOLD_S passed with nothing more on ``stream``: what it holds leaves (the reader does only if it holds)."""
        st = self.streams[stream]
        if st.held:
            self.capture._out(st, "", final=True)

    def end(self, stream: str = "stdout") -> None:
        """``stream`` ended (every writer closed it)."""
        self.capture._out(self.streams[stream], "", final=True)

    def recorded(self, stream: str = "stdout") -> str:
        return "".join(text for s, text in self.chunks if s == stream)


def runs_of(value: str, text: str, size: int = MIN_WITHHELD) -> list[str]:
    """The pieces of ``value`` of ``size`` characters that ``text`` holds."""
    return [value[i:i + size] for i in range(len(value) - size + 1) if value[i:i + size] in text]


def test_a_pause_at_any_point_of_a_secret_records_no_eight_characters_of_it() -> None:
    """For every k in 1..39 of a 40-character key: "x " and its first k characters, the hold expires, then the rest
    and a newline. No 8 characters of the key in a row are recorded: a first part of 8 characters or more leaves as
    the key's mark (none of its characters), a shorter one as it is (it would match ordinary text); the rest, which
    no chunk holds whole, is withheld as the key's mark as it comes, and nothing else is held or lost."""
    assert len(KEY) == 40
    for k in range(1, len(KEY)):
        s = Streams({"PAUSE_KEY": KEY})
        s.feed("x " + KEY[:k])
        s.expire()
        s.feed(KEY[k:] + " y\n")
        s.end()
        got = s.recorded()
        assert not runs_of(KEY, got), (k, got)
        assert got == "x " + (M if k >= MIN_WITHHELD else KEY[:k]) + M + " y\n", (k, got)


def test_three_pieces_with_two_expiries_leave_only_marks_past_the_first_piece() -> None:
    """The key in three pieces, the hold expiring after each of the first two, at every pair of cut points: the
    middle piece is held again when it comes (it may be the middle of the key: nothing of it leaves then), and when
    its hold expires too it leaves as the key's mark whatever its length; the last piece then is withheld too. No
    8 characters of the key in a row are recorded, and none of the middle or last piece at all."""
    for a in range(1, len(KEY) - 1):
        for b in range(a + 1, len(KEY)):
            s = Streams({"PAUSE_KEY": KEY})
            s.feed("x " + KEY[:a])
            s.expire()
            before = s.recorded()
            s.feed(KEY[a:b])
            assert s.recorded() == before, (a, b)  # held: it may be the middle of the key
            s.expire()
            s.feed(KEY[b:] + "\n")
            s.end()
            got = s.recorded()
            assert not runs_of(KEY, got), (a, b, got)
            assert got == "x " + (M if a >= MIN_WITHHELD else KEY[:a]) + M + M + "\n", (a, b, got)


def test_candidates_sharing_a_prefix_are_all_watched() -> None:
    """Two keys that begin alike ("sk-proj-"): the shared start leaves (as a mark if it is 8 characters or more,
    as it is if shorter) and whichever key goes on after the pause is withheld with its own mark. A released start
    that is the start of one key and ends with the start of another (12 characters of A ending in 4 of B) is
    watched for both: B's rest is withheld as B."""
    a, b = "sk-proj-Aa1Bb2Cc3Dd4Ee5Ff6", "sk-proj-Zz9Yy8Xx7Ww6Vv5Uu4"
    ma, mb = mark("KEY_A"), mark("KEY_B")
    for cut in (5, 8, 12):
        for value, marked in ((a, ma), (b, mb)):
            s = Streams({"KEY_A": a, "KEY_B": b})
            s.feed("x " + value[:cut])
            s.expire()
            s.feed(value[cut:] + " y\n")
            got = s.recorded()
            assert not runs_of(a, got) and not runs_of(b, got), (cut, got)
            assert got.endswith(marked + " y\n") and got.startswith("x " + (value[:cut] if cut < 8 else "[secret"))
    a, b = "QQQQQQQQsk-pAAAA1111", "sk-pBBBBBBBB2222"
    s = Streams({"KEY_A": a, "KEY_B": b})
    s.feed("x " + a[:12])
    s.expire()
    s.feed(b[4:] + " y\n")
    assert s.recorded() == f"x {ma}{mb} y\n"


def test_unrelated_text_ends_the_watch_and_is_recorded_unchanged_at_once() -> None:
    """After the start of the key left on its expiry, text that does not go on with the key ends the watch: it is
    recorded as it comes, at once (whole values in it still withheld, nothing held back for the old start); the
    rest of the key coming later is then no continuation (it is text as any other)."""
    for k in (3, 8, 20):
        s = Streams({"PAUSE_KEY": KEY})
        s.feed("x " + KEY[:k])
        s.expire()
        first = s.recorded()
        assert first == "x " + (M if k >= MIN_WITHHELD else KEY[:k])
        s.feed("hello world\n")
        assert s.recorded() == first + "hello world\n"
        s.feed(f"again {KEY}\n")
        assert s.recorded() == first + f"hello world\nagain {M}\n"
        s.feed(KEY[k:] + "\n")
        assert s.recorded().endswith(f"again {M}\n" + KEY[k:] + "\n")


def test_the_watch_is_per_stream() -> None:
    """The start of the key left stdout on its expiry: the rest of the key on stderr does not continue it (stderr
    watches nothing, and records the text as it is), and stdout's watch still withholds the rest there."""
    s = Streams({"PAUSE_KEY": KEY})
    s.feed("x " + KEY[:20])
    s.expire()
    s.feed(KEY[20:] + "\n", "stderr")
    s.feed(KEY[20:] + "\n")
    assert s.recorded() == f"x {M}{M}\n"
    assert s.recorded("stderr") == KEY[20:] + "\n"


def test_a_stream_that_ends_mid_secret_leaves_a_mark_for_eight_characters_or_more() -> None:
    """A stream that ends with the start of the key held: 8 characters or more leave as the key's mark, fewer as
    they are; a middle piece held under a watch leaves as a mark at the end too."""
    for k in (5, 7, 8, 30):
        s = Streams({"PAUSE_KEY": KEY})
        s.feed("Z " + KEY[:k])
        s.end()
        assert s.recorded() == "Z " + (M if k >= MIN_WITHHELD else KEY[:k])
    s = Streams({"PAUSE_KEY": KEY})
    s.feed("Z " + KEY[:10])
    s.expire()
    s.feed(KEY[10:12])
    s.end()
    assert s.recorded() == f"Z {M}{M}"


def test_a_real_capture_withholds_a_key_printed_around_a_pause_longer_than_the_hold() -> None:
    """A child process with a real capture prints the key in two pieces with a 1.5 s pause between, on stdout (all
    but its last character, then that character) and on stderr (its first 3 characters, then the rest): no 8
    characters of the key in a row are recorded on either stream."""
    assert HOLD_S < 1.5
    chunks = run_capture(f"""
        print({KEY[:-1]!r}, end="", flush=True)
        print({KEY[:3]!r}, end="", file=sys.stderr, flush=True)
        time.sleep(1.5)  # the workflow's pause, past the hold
        print({KEY[-1]!r} + " A", flush=True)
        print({KEY[3:]!r} + " B", file=sys.stderr, flush=True)
        until(lambda: emitted().count("\\n") == 2)
    """, {"PAUSE_KEY": KEY})
    secrets = {"PAUSE_KEY": KEY}
    stdout, stderr = as_recorded(chunks, "stdout", secrets), as_recorded(chunks, "stderr", secrets)
    assert not runs_of(KEY, stdout) and not runs_of(KEY, stderr), chunks
    assert stdout == f"{M}{M} A\n" and stderr == f"{KEY[:3]}{M} B\n", chunks


def test_random_pauses_leave_no_eight_characters_of_a_value_and_lose_nothing() -> None:
    """Random values (some overlapping, as windows of one text), a stream of them and of other text (from another
    alphabet), cut into random chunks with the hold expiring after random ones: no 8 characters of a value in a row
    are recorded in clear, and every character of the other text is, in order; with no expiry at all the stream
    reads exactly as the whole stream at once did before (overlap runs included)."""
    from tests.unit.test_capture_withhold import _random_case, _reference

    rng = random.Random(20240611)
    for _ in range(1500):  # no expiry: unchanged (the stream ends in text that cannot begin a value)
        values, stream = _random_case(rng)
        secrets = {f"S{i}": v for i, v in enumerate(values)}
        s = Streams(secrets)
        stream += "Q"
        for a, b in _cuts(rng, len(stream)):
            s.feed(stream[a:b])
        s.end()
        assert s.recorded() == _reference(stream, secrets), (values, stream)
    for _ in range(3000):
        if rng.random() < 0.5:
            values = ["".join(rng.choice("ab\n") for _ in range(rng.randint(8, 14))) for _ in range(rng.randint(1, 4))]
        else:
            base = "".join(rng.choice("abc") for _ in range(rng.randint(16, 30)))
            values = [base[at:at + rng.randint(8, min(14, len(base) - at))]
                      for at in (rng.randint(0, len(base) - 8) for _ in range(rng.randint(1, 4)))]
        stream = "".join(rng.choice([*values, "x", "yz ", "Q"]) for _ in range(rng.randint(1, 8)))
        s = Streams({f"S{i}": v for i, v in enumerate(values)})
        for a, b in _cuts(rng, len(stream)):
            s.feed(stream[a:b])
            if rng.random() < 0.4:
                s.expire()
        s.end()
        got = re.sub(r"\[secret S\d withheld\]", "#", s.recorded())
        assert not [r for v in values for r in runs_of(v, got)], (values, stream, got)
        assert re.sub("[^xyzQ ]", "", got) == re.sub("[^xyzQ ]", "", stream), (values, stream, got)


def _cuts(rng: random.Random, size: int, step: int = 9) -> list[tuple[int, int]]:
    """Random chunks of a text of ``size`` characters, up to ``step`` each: (start, end) pairs."""
    out, pos = [], 0
    while pos < size:
        n = rng.randint(1, step)
        out.append((pos, min(size, pos + n)))
        pos += n
    return out
