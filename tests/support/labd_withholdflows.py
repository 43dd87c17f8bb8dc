"""Workflows that print a session's secrets in pieces (tests/integration/test_withhold_split.py): the runner's output
capture must never record a secret split across two ``output`` events, where the channel cannot find it whole."""

from __future__ import annotations

import os
import sys
import time

from labd.runner.capture import CHUNK  # one read of a captured stream


def print_in_pieces(ctx, pause: float = 0.3) -> str:
    """Prints FAKE_API_KEY in two writes with a pause between (longer than the capture's 100 ms partial-line
    flush), on stdout and on stderr; FAKE_PRIVATE_KEY (several lines) without a newline after it; a line that
    straddles a 64 KiB read of the pipe with the key across the boundary; and ends with the start of the key and
    no newline (the process ends mid-prefix)."""
    key = ctx.secret("FAKE_API_KEY") or ""
    pem = ctx.secret("FAKE_PRIVATE_KEY") or ""
    half = len(key) // 2
    for stream in (sys.stdout, sys.stderr):
        stream.write(f"A {key[:half]}")
        stream.flush()
        time.sleep(pause)  # the scenario ("sleeps a little" mid-secret), not synchronisation
        stream.write(f"{key[half:]} A\n")
        stream.flush()
    print(f"B {pem}", end="", flush=True)  # the line cut falls inside the value (it holds newlines)
    time.sleep(pause)
    print(" B", flush=True)
    with ctx.step("straddle"):  # a step boundary waits until the capture has read everything so far
        # one write: the capture reads it 64 KiB at a time, and the first read ends in the middle of the key
        os.write(1, b"C" * (CHUNK - half) + key.encode() + b" C\n")
    sys.stdout.write(f"Z {key[:5]}")  # the end of the session's output is the start of the key
    sys.stdout.flush()
    return "done"


def key_across_steps(ctx, pause: float = 0.3) -> str:
    """A step ends with the first 5 characters of FAKE_API_KEY and no newline (held back: they may start the key),
    and the next step prints the rest; then the same with the first half (10 characters)."""
    key = ctx.secret("FAKE_API_KEY") or ""
    for cut in (5, len(key) // 2):
        with ctx.step(f"start-{cut}"):
            print(f"S{cut} {key[:cut]}", end="", flush=True)
        time.sleep(pause)  # the scenario, not synchronisation
        with ctx.step(f"rest-{cut}"):
            print(f"{key[cut:]} R{cut}", flush=True)
    return "done"
