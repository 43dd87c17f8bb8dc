"""What a runner left in its crash file (``sessions/<id>/runner.stderr``: its fd 2, with faulthandler's report of a
fatal error; runner/session.own_crash_channel), read when it exits on a signal or a non-zero code, for the reason
``session.ended`` records (``runner_stderr``). A local runner's file is read here; a Ray runner's on its node, by
its actor (runner/ray_actor.py), which hands the same tail back with the exit status."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from labd.runner.crash_tail import read_tail
from labd.runner.withhold import mark

__all__ = ["CRASH_TAIL", "crash_text", "crash_text_of"]

#: characters of a runner's crash file recorded in ``session.ended`` (its end: where the fatal error is)
CRASH_TAIL = 2000
#: the first line of CPython's report of a fatal error (faulthandler), kept when the end is cut below it
FATAL = "Fatal Python error: "


def crash_text(crash_file: Path | str | None, secrets: Iterable[tuple[str, str]]) -> str | None:
    """The end of a runner's crash file (at most :data:`CRASH_TAIL` characters, from a line start when it is cut,
    the session's secrets withheld); None if it is empty or cannot be read."""
    tail = read_tail(crash_file)
    return None if tail is None else crash_text_of(tail[0], tail[1], secrets)


def crash_text_of(text: str, cut: bool, secrets: Iterable[tuple[str, str]]) -> str | None:
    """What is recorded of a crash file's tail ``text`` (``cut``: the file held more before it): at most
    :data:`CRASH_TAIL` characters, from a line start when cut, the session's secrets withheld. A remote runner's
    tail comes from its node: it is bounded again here."""
    # Secrets first, on all of it: a cut below (the tail's start, the headline's 200 characters) could split a value,
    # whose pieces no replace would find (a crash text once kept 24 of a key's 29 characters).
    for name, value in secrets:
        text = text.replace(value, mark(name))
    text = text[-4 * CRASH_TAIL:].strip()
    if len(text) > CRASH_TAIL or cut:
        whole, text = text, text[-CRASH_TAIL:]
        text = text.split("\n", 1)[1] if "\n" in text else text  # from a line start: no piece of a secret
        # A fatal error's report starts with its headline, then a traceback per thread: with many threads the end
        # alone lost the one line that says what happened. Kept, above the end.
        head = next((line for line in whole.splitlines() if line.startswith(FATAL)), None)
        if head is not None and head not in text:
            above = f"{head[:200]}\n[...]\n"  # within CRASH_TAIL with it: the end gives up as many characters
            text = text[-(CRASH_TAIL - len(above)):]
            text = above + (text.split("\n", 1)[1] if "\n" in text else text)
    return text or None
