"""What is recorded of a runner's crash file (daemon/crash_report.py): its end, bounded, from a line start when cut,
the session's secrets withheld; read without following a link (runner/crash_tail.py)."""

from __future__ import annotations

import os
from pathlib import Path

from labd.daemon.crash_report import CRASH_TAIL, crash_text, crash_text_of
from labd.runner.crash_tail import read_tail


def test_a_remote_runners_tail_is_bounded_again_and_its_secrets_withheld() -> None:
    """A Ray node hands back the tail it read; the daemon does not trust its size: a megabyte of text is recorded
    as its last CRASH_TAIL characters (before withholding) starting at a line, and a secret in it is withheld."""
    text = "".join(f"line {i} sk-live-SECRET123\n" for i in range(50_000)) + "Fatal Python error: boom"
    out = crash_text_of(text, False, [("OPENAI_API_KEY", "sk-live-SECRET123")])
    assert out is not None and out.endswith("Fatal Python error: boom")
    assert len(out.replace("[secret OPENAI_API_KEY withheld]", "sk-live-SECRET123")) <= CRASH_TAIL
    assert out.startswith("line ") and "sk-live-SECRET123" not in out and "OPENAI_API_KEY" in out


def test_a_short_crash_file_is_recorded_whole_and_a_link_is_not_followed(tmp_path: Path) -> None:
    """A crash file of a few lines is recorded as it is (not cut); a crash file that session code replaced by a
    symlink to another file is not read at all."""
    f = tmp_path / "runner.stderr"
    f.write_text("Traceback...\nRuntimeError: x\n")
    assert crash_text(f, []) == "Traceback...\nRuntimeError: x"
    assert read_tail(f) == ("Traceback...\nRuntimeError: x\n", False)
    other = tmp_path / "secret.txt"
    other.write_text("private")
    link = tmp_path / "linked.stderr"
    os.symlink(other, link)
    assert read_tail(link) is None and crash_text(link, []) is None


def test_a_fatal_errors_headline_is_kept_when_its_thread_dump_is_longer_than_the_tail() -> None:
    """A segfault in a runner with many threads: faulthandler writes "Fatal Python error: Segmentation fault" first,
    then a traceback per thread, more than CRASH_TAIL characters. What is recorded keeps that headline above the
    end (it was cut off: the record said only which threads were where; seen in CI, a flaky
    test_runner_fds crash test)."""
    threads = "".join(f"Thread 0x{i:016x} (most recent call first):\n  File \"/x/threading.py\", line {i} in wait\n\n"
                      for i in range(60))
    text = "Fatal Python error: Segmentation fault\n\n" + threads + "Extension modules: zmq (total: 1)"
    out = crash_text_of(text, False, [])
    assert out is not None and out.startswith("Fatal Python error: Segmentation fault\n[...]\n")
    # the whole within CRASH_TAIL, the headline included (it went over by up to 207 characters)
    assert out.endswith("Extension modules: zmq (total: 1)") and len(out) <= CRASH_TAIL
    short = "Fatal Python error: Aborted\n\nCurrent thread 0x1:\n  File x"
    assert crash_text_of(short, False, []) == short  # not cut: as it is, the headline once


def test_a_secret_the_cuts_would_split_is_withheld_whole() -> None:
    """A secret straddling the tail's cut (a last line longer than the tail, no newline to start from) or the fatal
    headline's 200-character cut leaves no piece of itself in the record: secrets are withheld before any cut."""
    from labd.daemon.crash_report import CRASH_TAIL, FATAL, crash_text_of

    key = "sk-FAKESECRET0123456789abcdef"
    at_cut = "x" * 100 + key + "y" * (CRASH_TAIL - 10)  # the tail starts inside the key
    headline = FATAL + "z" * (200 - len(FATAL) - 5) + key  # the headline's cut falls inside the key
    for text in (at_cut, headline + "\n" + "t" * (CRASH_TAIL + 50)):
        out = crash_text_of(text, True, [("OPENAI_API_KEY", key)]) or ""
        for piece in (key[:8], key[-8:], key[8:20]):
            assert piece not in out, (piece, out[:300])
