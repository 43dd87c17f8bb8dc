"""A secret the workflow prints is replaced by ``[secret NAME withheld]`` by the channel, which finds a value only
where one ``output`` event holds it whole, so the output capture replaces them in the stream itself, holding back a
tail that may be the start of one (labd.runner.withhold.StreamWithholder, OutputCapture.withhold). The capture runs
in a child process (it takes over fds 1 and 2); the chunks it emitted come back as JSON on the child's real stdout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from labd.runner.capture import CHUNK
from labd.runner.withhold import MIN_WITHHELD, StreamWithholder, looked_for, mark

KEY = "sk-leak-Z9q8w7e6r5t4"
HALF = len(KEY) // 2
PEM = "-----BEGIN FAKE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nbm90IGEgcmVhbCBrZXk=\n-----END FAKE KEY-----"
SECRETS = {"FAKE_API_KEY": KEY, "FAKE_PRIVATE_KEY": PEM}

PRELUDE = """
import json, os, sys, time
from labd.runner.capture import CHUNK, OutputCapture
secrets, cap = json.loads(sys.argv[1]), json.loads(sys.argv[2])
real = os.dup(1)
chunks = []
capture = OutputCapture(lambda stream, text: chunks.append([stream, text]), cap)
capture.withhold(secrets)
capture.install()

def until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            os.write(real, json.dumps({"timeout": chunks}).encode())
            os._exit(9)
        time.sleep(0.002)

def emitted():
    return "".join(text for _, text in chunks)

"""
EPILOGUE = """
capture.close()
os.write(real, json.dumps(chunks).encode())
"""


def run_capture(body: str, secrets: dict[str, str] | None = None, cap: int | None = None) -> list[list[str]]:
    """Run ``body`` in a child whose fds 1 and 2 are captured with ``secrets`` withheld; the emitted chunks."""
    code = PRELUDE + textwrap.dedent(body) + EPILOGUE
    out = subprocess.run([sys.executable, "-c", code, json.dumps(SECRETS if secrets is None else secrets),
                          json.dumps(cap)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return json.loads(out.stdout)


def as_recorded(chunks: list[list[str]], stream: str = "stdout", secrets: dict[str, str] | None = None) -> str:
    """One stream's text as the store gets it: each chunk is one event, in which the channel replaces each value
    it finds whole (longest first, as Channel.withhold does): what the capture missed, it catches if it can."""
    pairs = looked_for(SECRETS if secrets is None else secrets)
    texts = []
    for s, text in chunks:
        if s == stream:
            for name, value in pairs:
                text = text.replace(value, mark(name))
            texts.append(text)
    return "".join(texts)


M = "[secret FAKE_API_KEY withheld]"
P = "[secret FAKE_PRIVATE_KEY withheld]"


@pytest.mark.parametrize("fd, stream", [(1, "stdout"), (2, "stderr")])
def test_a_secret_written_in_two_pieces_with_a_pause_is_emitted_whole(fd: int, stream: str) -> None:
    """Half a secret, a flush, a pause past the 100 ms partial-line flush, then the rest: the first half is held
    back (the text before it leaves), so the secret is whole in one event, on stdout and on stderr alike."""
    chunks = run_capture(f"""
        os.write({fd}, b"A {KEY[:HALF]}")
        until(lambda: chunks)  # the partial line has been emitted (as far as it may be)
        os.write({fd}, b"{KEY[HALF:]} A\\n")
    """)
    assert as_recorded(chunks, stream) == f"A {M} A\n", chunks
    assert [s for s, _ in chunks] == [stream] * len(chunks)


def test_a_write_straddling_a_64k_read_keeps_the_secret_whole() -> None:
    """One large write is read 64 KiB at a time, and a line that long is emitted in 64 KiB pieces: the piece that
    ends inside the secret leaves without the secret's start, which goes out in front of the next piece."""
    chunks = run_capture(f"""
        os.write(1, b"x" * (CHUNK - {HALF}) + b"{KEY} x\\n")
    """)
    assert as_recorded(chunks) == "x" * (CHUNK - HALF) + f"{M} x\n"
    assert len(chunks) >= 2  # it was cut: the long line went out in more than one piece


def test_a_multi_line_secret_is_not_cut_at_its_own_newlines() -> None:
    """A value holding newlines (a PEM key) printed without a newline after it: the capture cuts a chunk at its
    last newline, which is inside the value; the part of the value before that is held back instead."""
    chunks = run_capture(f"""
        print("B " + {PEM!r}, end="", flush=True)
        until(lambda: chunks)
        print(" B", flush=True)
    """)
    assert as_recorded(chunks) == f"B {P} B\n", chunks


def test_many_secrets_each_split_are_each_emitted_whole() -> None:
    """Five secrets, each written in two pieces with a partial-line flush between: each is whole in one event."""
    secrets = {f"KEY_{i}": f"tok{i}-{'abcdefghij'[i:]}{i}" * 2 for i in range(5)}
    body = ""
    for value in secrets.values():
        half = len(value) // 2
        body += f"""
n = len(chunks)
os.write(1, b"[{value[:half]}")
until(lambda: len(chunks) > n)
os.write(1, b"{value[half:]}]\\n")
until(lambda: emitted().endswith("]\\n"))
"""
    chunks = run_capture(body, secrets)
    assert as_recorded(chunks, secrets=secrets) == "".join(f"[[secret {n} withheld]]\n" for n in secrets), chunks


def test_a_secret_inside_one_chunk_is_replaced_and_other_output_is_not_held() -> None:
    """A secret within one write is replaced in that chunk; output that cannot be the start of a secret (a line
    ending in a newline) leaves at once; only a tail that may start one waits ("task" leaves, its "s" waits)."""
    chunks = run_capture(f"""
        os.write(1, b"one {KEY} two\\n")
        until(lambda: chunks)
        os.write(1, b"tasks")
        until(lambda: len(chunks) > 1)
        first = list(chunks)
        os.write(1, b" done\\n")
        until(lambda: emitted().endswith("done\\n"))
        chunks.insert(0, ["first", json.dumps(first)])
    """)
    first = json.loads(chunks.pop(0)[1])
    assert first == [["stdout", f"one {M} two\n"], ["stdout", "task"]]
    assert as_recorded(chunks) == f"one {M} two\ntasks done\n"


def test_a_held_tail_is_released_by_its_deadline_and_at_the_stream_end() -> None:
    """Nothing is held forever: the start of a secret whose rest never comes leaves on its own after HOLD_S while
    the stream stays open (as the secret's mark: it is 10 characters long), and a stream that ends mid-prefix has
    that prefix emitted at its end (as it is: 5 characters, too short to tell from ordinary text)."""
    chunks = run_capture(f"""
        os.write(1, b"A {KEY[:HALF]}")
        until(lambda: "withheld" in emitted())  # no more output, stream still open
        os.write(2, b"Z {KEY[:5]}")  # the process ends mid-prefix (close() below)
    """)
    assert HALF >= MIN_WITHHELD > 5
    assert as_recorded(chunks) == f"A {M}"
    assert as_recorded(chunks, "stderr") == f"Z {KEY[:5]}"
    assert chunks[:2] == [["stdout", "A "], ["stdout", M]]  # the start of the key waited on its own


def test_overlapping_secrets_written_in_two_pieces_with_a_pause_leave_no_piece() -> None:
    """A = AAAAkey1XYZW, a pause past the partial-line flush, then the rest of B = XYZWmore5678 (B begins inside
    A's end): A waits with the start of B, and the two leave as one run, both marks and nothing of either (A used
    to leave at once, and then "more5678" after it)."""
    secrets = {"A_TOKEN": "AAAAkey1XYZW", "B_TOKEN": "XYZWmore5678"}
    chunks = run_capture("""
        os.write(1, b"x AAAAkey1XYZW")
        until(lambda: chunks)
        os.write(1, b"more5678 y\\n")
    """, secrets)
    assert chunks[0] == ["stdout", "x "]
    assert as_recorded(chunks, secrets=secrets) == "x [secret A_TOKEN withheld][secret B_TOKEN withheld] y\n"


def test_the_cap_never_keeps_the_start_of_a_secret() -> None:
    """An output cap that falls inside a secret keeps none of it: the cap counts the output with secrets replaced."""
    chunks = run_capture(f"""
        os.write(1, b"aaaa {KEY} bbb\\n")
    """, cap=len("aaaa ") + 6)
    assert chunks == [["stdout", f"aaaa {M}"[:11]]]


@pytest.mark.parametrize("secrets", [{}, {"SHORT_KEY": "x" * (MIN_WITHHELD - 1)}])
def test_without_secrets_output_is_cut_as_before(secrets: dict[str, str]) -> None:
    """No secret looked for (none, or only values too short to look for): no withholder, nothing is held back (a
    partial line leaves whole, as before)."""
    assert StreamWithholder.of(secrets) is None
    chunks = run_capture("""
        os.write(1, b"partial xxxxxxx")
        until(lambda: chunks)
    """, secrets)
    assert chunks == [["stdout", "partial xxxxxxx"]]


# ---- StreamWithholder on its own ---------------------------------------------------------------------------
def test_a_withholder_replaces_whole_values_and_holds_the_longest_tail_that_may_start_one() -> None:
    """What leaves has every whole value replaced; what is held is the earliest tail that is a proper prefix of
    some value (at most longest - 1 characters); text whose last character ends no prefix of a value leaves whole;
    at the end (final) the held text leaves as it is."""
    w = StreamWithholder.of(SECRETS)
    assert w is not None
    assert w.split("line\n") == ("line\n", "")
    assert w.split("") == ("", "")
    assert w.split(f"using {KEY[:HALF]}") == ("using ", KEY[:HALF])
    assert w.split(f"using {KEY[:HALF]}", final=True) == (f"using {KEY[:HALF]}", "")
    assert w.split(f"a {KEY[:-1]}") == ("a ", KEY[:-1])
    assert w.split(f"a {KEY} b {KEY}") == (f"a {M} b {M}", "")
    assert w.split("sk-sk-") == ("sk-", "sk-")  # not "sk-sk-": that cannot begin the value
    assert w.split(PEM[:40]) == ("", PEM[:40])
    # the key ends in "-----", which could begin it again, overlapping this one: the two would be one run
    assert w.split(f"B {PEM}") == ("B ", PEM)
    assert w.split(f"B {PEM}\n") == (f"B {P}\n", "")
    assert len(w.split("y" * 1000 + KEY[:-1])[1]) == len(KEY) - 1


def test_a_withholder_with_values_inside_values() -> None:
    """A value that holds another: while the longer may still come, the shorter one inside it is held too (and
    replaced when the held text leaves at the end); once it came whole, it is replaced whole (one mark). A value
    followed by the start of another that would overlap it waits with it: the two may be one run."""
    inner = "innerSECRET1"
    w = StreamWithholder.of({"OUTER": f"XXXX{inner}YYY", "INNER": inner})
    assert w is not None
    assert w.split(f"x XXXX{inner}YY") == ("x ", f"XXXX{inner}YY")
    assert w.split(f"XXXX{inner}YYY z") == ("[secret OUTER withheld] z", "")
    assert w.split(f"XXXX{inner}YY", final=True) == ("XXXX[secret INNER withheld]YY", "")
    w = StreamWithholder.of({"S0": "xxxxxxxxA", "S1": "xxA-something-long"})
    assert w is not None
    assert w.split("see xxxxxxxxA-some") == ("see ", "xxxxxxxxA-some")
    assert w.split("xxxxxxxxA-something-long.") == ("[secret S0 withheld][secret S1 withheld].", "")
    assert w.split("xxxxxxxxA-some.") == ("[secret S0 withheld]-some.", "")


def _reference(stream: str, secrets: dict[str, str]) -> str:
    """The values replaced in a whole stream at once, naively: every character of every occurrence of every value
    is covered; neighbouring characters that one occurrence spans both are in one run (two occurrences that only
    touch make two), which reads as the marks of the values of its occurrences that lie within no other one, each
    once, in the order they first begin."""
    marks: dict[str, str] = {}
    for name, value in looked_for(secrets):
        marks.setdefault(value, mark(name))
    occurrences = [(i, i + len(v), v) for i in range(len(stream)) for v in marks if stream.startswith(v, i)]
    covered, linked = [False] * len(stream), [False] * len(stream)  # linked[i]: i and i + 1 in one occurrence
    for s, e, _ in occurrences:
        covered[s:e] = [True] * (e - s)
        linked[s:e - 1] = [True] * (e - 1 - s)
    out, i = [], 0
    while i < len(stream):
        if not covered[i]:
            out.append(stream[i])
            i += 1
            continue
        j = i
        while linked[j]:
            j += 1
        run = sorted((s, e, v) for s, e, v in occurrences if i <= s and e <= j + 1)
        named = [v for s, e, v in run if not any((s2, e2) != (s, e) and s2 <= s and e <= e2 for s2, e2, _ in run)]
        out.append("".join(marks[v] for v in dict.fromkeys(named)))
        i = j + 1
    return "".join(out)


def _random_case(rng: Any) -> tuple[list[str], str]:
    """Values and a stream made of them, of pieces of them and of other text, so that occurrences overlap, repeat
    and nest: either random values over a small alphabet, or windows of one random text (which overlap)."""
    if rng.random() < 0.5:
        values = ["".join(rng.choice("ab\n") for _ in range(rng.randint(MIN_WITHHELD, 12)))
                  for _ in range(rng.randint(1, 4))]
        extra = ["a", "b", "\n", "ab"]
    else:
        base = "".join(rng.choice("abc") for _ in range(rng.randint(16, 30)))
        values = []
        for _ in range(rng.randint(2, 4)):
            at = rng.randint(0, len(base) - MIN_WITHHELD)
            values.append(base[at:at + rng.randint(MIN_WITHHELD, min(12, len(base) - at))])
        extra = [base[a:b] for a in range(0, len(base), 5) for b in (a + 9, a + 15)] + ["c", "\n"]
    parts = [rng.choice([*values, *(v[:rng.randint(1, len(v) - 1)] for v in values),
                         *(v[rng.randint(1, len(v) - 1):] for v in values), *extra])
             for _ in range(rng.randint(1, 12))]
    return values, "".join(parts)


def _through(w: StreamWithholder, stream: str, rng: Any, limit: int) -> str:
    """The stream through ``w`` as OutputCapture applies it (:func:`_pieces`), joined."""
    return "".join(_pieces(w, stream, rng, limit))


def _pieces(w: StreamWithholder, stream: str, rng: Any, limit: int, max_step: int = 9) -> list[str]:
    """What leaves ``w`` at each chunk of the stream, as OutputCapture applies it (held tail + next chunk, split,
    hold the rest; all of it at the stream's end), cut into random chunks of up to ``max_step`` characters; what
    is held is never more than ``limit`` characters."""
    emitted, held, pos = [], "", 0
    while pos < len(stream):
        step = rng.randint(1, max_step)
        text, held = w.split(held + stream[pos:pos + step])
        pos += step
        emitted.append(text)
        assert len(held) <= limit, (held, stream)
    emitted.append(w.split(held, final=True)[0])
    return emitted


def test_a_withholder_gives_what_the_whole_stream_would_whatever_the_chunks() -> None:
    """The hold-back as OutputCapture applies it, over random texts of values that overlap (without one holding the
    other), repeat and nest, cut into random chunks: the chunks put together are the whole stream with its values
    replaced as runs (nothing lost, reordered or leaked), and what is held is never more than a run with the start
    of a value after it."""
    import random

    rng = random.Random(20240607)
    for _ in range(3000):
        values, stream = _random_case(rng)
        secrets = {f"S{i}": v for i, v in enumerate(values)}
        w = StreamWithholder.of(secrets)
        assert w is not None
        assert _through(w, stream, rng, w.hold_max) == _reference(stream, secrets), (values, stream)


def test_a_run_too_long_to_hold_leaves_in_pieces_with_no_character_of_a_value() -> None:
    """With the hold for a run of overlapping values cut to twice the longest value, the same random streams: what
    leaves holds the same text outside the runs as the whole stream at once, each run only as marks (a name may
    repeat where a run was cut), and never more than that is held."""
    import random
    import re

    rng = random.Random(99)
    runs = re.compile(r"(?:\[secret S\d withheld\])+")
    for _ in range(3000):
        values, stream = _random_case(rng)
        secrets = {f"S{i}": v for i, v in enumerate(values)}
        w = StreamWithholder.of(secrets)
        assert w is not None
        w.hold_max = 2 * max(map(len, values))
        got = _through(w, stream, rng, w.hold_max)
        assert runs.sub("#", got) == runs.sub("#", _reference(stream, secrets)), (values, stream, got)


OVERLAPS = {  # name: (secrets, stream, what the stream reads as)
    "two": ({"A": "AAAAkey1XYZW", "B": "XYZWmore5678"}, "x AAAAkey1XYZWmore5678 y\n",
            "x [secret A withheld][secret B withheld] y\n"),
    "three in a chain": ({"A": "AAAAkey1XYZW", "B": "XYZWmore5678", "C": "5678tail9999"},
                         "x AAAAkey1XYZWmore5678tail9999 y\n",
                         "x [secret A withheld][secret B withheld][secret C withheld] y\n"),
    "shorter on the left": ({"SHORT": "shortKEY1234", "LONG": "KEY1234-and-a-longer-tail"},
                            "x shortKEY1234-and-a-longer-tail y\n",
                            "x [secret SHORT withheld][secret LONG withheld] y\n"),
    "a value again inside its own end": ({"PEM": PEM}, f"x {PEM}{PEM[5:]} y\n", "x [secret PEM withheld] y\n"),
    "touching, not overlapping": ({"A": "AAAAkey1XYZW", "B": "XYZWmore5678"}, "AAAAkey1XYZWXYZWmore5678\n",
                                  "[secret A withheld][secret B withheld]\n"),
    "one inside one of a run": ({"A": "AAAAkey1XYZW", "B": "XYZWmore5678", "IN": "Akey1XYZW"},
                                "AAAAkey1XYZWmore5678", "[secret A withheld][secret B withheld]"),
    "one across a run": ({"A": "AAAAkey1XYZW", "B": "XYZWmore5678", "IN": "key1XYZWmo"},
                         "AAAAkey1XYZWmore5678", "[secret A withheld][secret IN withheld][secret B withheld]"),
}


@pytest.mark.parametrize("case", OVERLAPS)
def test_overlapping_values_leave_no_piece_whatever_two_cuts(case: str) -> None:
    """Values that overlap without one holding the other (two, a chain of three, a shorter one to the left of a
    longer one, a key that begins again inside its own end), two that only touch (two runs), a value inside one of
    a run's values (no mark of its own) and one across two of them (a mark, in its place): the stream cut at any two
    places reads as each run's marks, and no character of a value is left."""
    secrets, stream, expected = OVERLAPS[case]
    w = StreamWithholder.of(secrets)
    assert w is not None
    assert _reference(stream, secrets) == expected
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            emitted, held = [], ""
            for piece in (stream[:i], stream[i:j], stream[j:]):
                text, held = w.split(held + piece)
                emitted.append(text)
            emitted.append(w.split(held, final=True)[0])
            assert "".join(emitted) == expected, (i, j, emitted)


def test_a_long_run_of_a_value_overlapping_itself_is_held_no_more_than_its_bound() -> None:
    """A value that overlaps itself (eight dashes) in 50,003 dashes, in chunks of up to 4 KiB: every dash leaves as
    part of a mark (replacing one value after the other left the last three), and the held text stays within
    hold_max, leaving in pieces of marks instead of waiting for the run's end."""
    import random
    import re

    secrets = {"DASHES": "-" * 8}
    w = StreamWithholder.of(secrets)
    assert w is not None
    assert w.hold_max == 8192
    rng = random.Random(5)
    stream = "-" * 50_003 + "\n"
    emitted = _pieces(w, stream, rng, w.hold_max, max_step=4096)
    got = "".join(emitted)
    assert re.fullmatch(r"(?:\[secret DASHES withheld\])+\n", got), got[-200:]
    assert sum(len(e) > 0 for e in emitted) > 5  # it left as it came, not all at the end


def test_an_event_whose_escape_sequence_looks_like_a_secret_stays_valid_json() -> None:
    """A secret beginning with a letter JSON uses in escapes (``n``, ``t``, ``u``...) also matches inside an escape
    of the encoded event (``\\n`` then the rest of the value) where the text holds no such secret: the event is
    recorded unchanged, still valid JSON; an event holding the secret itself as well has it withheld (and only
    it), and an event without any is passed on as the very same object."""
    import orjson

    from labd.runner.withhold import withhold_event

    secrets = {"TOKEN": "nabcdefgh1", "HEX": "u0001zzzzzz"}
    plain = [(v, mark(n)) for n, v in looked_for(secrets)]
    encoded = [(orjson.dumps(v)[1:-1], orjson.dumps(m)[1:-1]) for v, m in plain]
    look_alike = ["output", {"text": "line\nabcdefgh1 and \u0001zzzzzz"}]
    raw = orjson.dumps(look_alike)
    assert b"nabcdefgh1" in raw and b"u0001zzzzzz" in raw  # the byte-level look-alikes
    assert orjson.loads(withhold_event(raw, encoded, plain)) == look_alike
    both = ["output", {"text": "line\nabcdefgh1 then nabcdefgh1"}]
    got = orjson.loads(withhold_event(orjson.dumps(both), encoded, plain))
    assert got == ["output", {"text": "line\nabcdefgh1 then [secret TOKEN withheld]"}]
    quiet = orjson.dumps(["output", {"text": "nothing to see"}])
    assert withhold_event(quiet, encoded, plain) is quiet
