"""A secret the workflow prints in pieces never reaches the store: a real daemon, a real session with secrets, its
output split the ways the capture used to cut a secret in two (labd.runner.withhold, OutputCapture.withhold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labd.runner.capture import CHUNK
from tests.conftest import running_daemon

KEY = "sk-leak-Z9q8w7e6r5t4"
HALF = len(KEY) // 2
PEM_LINES = ["-----BEGIN FAKE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "bm90IGEgcmVhbCBrZXk=",
             "-----END FAKE KEY-----"]
PEM = "\n".join(PEM_LINES)
M = "[secret FAKE_API_KEY withheld]"
P = "[secret FAKE_PRIVATE_KEY withheld]"


def _printed(home: Path, params: dict[str, Any] | None = None) -> tuple[str, str, str, bytes, str]:
    """Run ``print_in_pieces`` to its end on a daemon with both secrets: (its stdout, its stderr, every event of it
    as text, the database's bytes, the daemon's log)."""
    with running_daemon(home, extra_env={"FAKE_API_KEY": KEY, "FAKE_PRIVATE_KEY": PEM}) as d, d.client() as c:
        sid = c.start("labd_withholdflows:print_in_pieces", params=params or {})
        final = c.wait(sid, timeout=60)
        assert final["status"] == "completed", final
        events = list(c.history(sid))
        log = d.log()
    outputs = [e["payload"] for e in events if e["kind"] == "output"]
    stdout = "".join(p["text"] for p in outputs if p["stream"] == "stdout")
    stderr = "".join(p["text"] for p in outputs if p["stream"] == "stderr")
    db = b"".join(p.read_bytes() for p in home.glob("labd.db*"))
    return stdout, stderr, repr(events), db, log


def test_a_secret_printed_in_pieces_is_withheld_whole_and_no_output_is_lost(isolated_env: Path) -> None:
    """A session prints its API key in two writes with a pause between (stdout and stderr), a several-line private
    key with no newline after it, a line whose 64 KiB read ends inside the key, and ends with the start of the key
    and no newline. The store holds ``[secret NAME withheld]`` where each value was and no piece of either value;
    every other character is there, in order, and the session's last (mid-prefix) output is not lost."""
    stdout, stderr, text, db, log = _printed(isolated_env)
    assert stdout == f"A {M} A\nB {P} B\n" + "C" * (CHUNK - HALF) + f"{M} C\nZ {KEY[:5]}", stdout[-500:]
    assert f"A {M} A\n" in stderr, stderr
    pieces = [KEY[:HALF], KEY[HALF:], *PEM_LINES[1:3]]
    assert not [p for p in pieces if p in text], stdout[-500:]
    assert not [p for p in pieces if p.encode() in db]
    assert not [p for p in pieces if p in log]


def test_a_secret_printed_around_a_pause_longer_than_the_hold_leaves_no_eight_characters(isolated_env: Path) -> None:
    """The same workflow pausing 3 s mid-secret, past the capture's 1 s hold: the held first half of the key
    leaves on its own, as the key's mark (it is 10 characters long), and the second half, which no output event
    holds whole, is withheld as the key's mark when it comes, on stdout and on stderr. No 8 characters of the key
    in a row reach the events, the database or the daemon's log, and no other output is lost."""
    from labd.runner.capture import HOLD_S

    assert HOLD_S * 2 < 3.0
    # 3 s: twice the hold and more, so that a loaded box (the reader thread late) still sees the pause outlast it
    stdout, stderr, text, db, log = _printed(isolated_env, {"pause": 3.0})
    assert stdout == f"A {M}{M} A\nB {P} B\n" + "C" * (CHUNK - HALF) + f"{M} C\nZ {KEY[:5]}", stdout[-500:]
    assert stderr == f"A {M}{M} A\n", stderr
    runs = [KEY[i:i + 8] for i in range(len(KEY) - 7)]
    assert not [r for r in runs if r in text], stdout[-500:]
    assert not [r for r in runs if r.encode() in db]
    assert not [r for r in runs if r in log]
