"""A secret the workflow prints in pieces never reaches the store: a real daemon, a real session with secrets, its
output split the ways the capture used to cut a secret in two (labd.runner.withhold, OutputCapture.withhold)."""

from __future__ import annotations

from pathlib import Path

from labd.runner.capture import CHUNK
from tests.conftest import running_daemon

KEY = "sk-leak-Z9q8w7e6r5t4"
HALF = len(KEY) // 2
PEM_LINES = ["-----BEGIN FAKE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "bm90IGEgcmVhbCBrZXk=",
             "-----END FAKE KEY-----"]
PEM = "\n".join(PEM_LINES)
M = "[secret FAKE_API_KEY withheld]"
P = "[secret FAKE_PRIVATE_KEY withheld]"


def test_a_secret_printed_in_pieces_is_withheld_whole_and_no_output_is_lost(isolated_env: Path) -> None:
    """A session prints its API key in two writes with a pause between (stdout and stderr), a several-line private
    key with no newline after it, a line whose 64 KiB read ends inside the key, and ends with the start of the key
    and no newline. The store holds ``[secret NAME withheld]`` where each value was and no piece of either value;
    every other character is there, in order, and the session's last (mid-prefix) output is not lost."""
    with running_daemon(isolated_env, extra_env={"FAKE_API_KEY": KEY, "FAKE_PRIVATE_KEY": PEM}) as d, \
            d.client() as c:
        sid = c.start("labd_withholdflows:print_in_pieces")
        final = c.wait(sid, timeout=60)
        assert final["status"] == "completed", final
        events = list(c.history(sid))
        log = d.log()
    outputs = [e["payload"] for e in events if e["kind"] == "output"]
    stdout = "".join(p["text"] for p in outputs if p["stream"] == "stdout")
    stderr = "".join(p["text"] for p in outputs if p["stream"] == "stderr")
    assert stdout == f"A {M} A\nB {P} B\n" + "C" * (CHUNK - HALF) + f"{M} C\nZ {KEY[:5]}", stdout[-500:]
    assert f"A {M} A\n" in stderr, stderr
    pieces = [KEY[:HALF], KEY[HALF:], *PEM_LINES[1:3]]
    text = repr(events)
    assert not [p for p in pieces if p in text], [p["text"][-200:] for p in outputs]
    db = b"".join(p.read_bytes() for p in isolated_env.glob("labd.db*"))
    assert not [p for p in pieces if p.encode() in db]
    assert not [p for p in pieces if p in log]
