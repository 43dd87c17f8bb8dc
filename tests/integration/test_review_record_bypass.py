"""Review of ``[daemon] max_session_record`` end to end: a workflow that writes ``output`` events to its channel
itself with a large extra field got past both the output cap (the daemon's backstop sized an output event by its
text alone) and the record bound (which leaves the output kinds to the output cap)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from labd.ipc import Client
from tests.conftest import DaemonProc, module_daemon_on, pointed_at

MiB = 2**20


@pytest.fixture(scope="module")
def record_daemon(request: pytest.FixtureRequest) -> Iterator[DaemonProc]:
    with module_daemon_on(request, '[daemon]\nmax_session_record = "2M"\n') as d:
        yield d


@pytest.fixture
def client(record_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    with pointed_at(record_daemon, monkeypatch).client() as c:
        yield c


def _padded_output(n: int, size: int) -> str:
    """``n`` output events with an empty text and ``size`` characters in an extra field, written to the channel."""
    import labd

    ctx = labd.context()
    pad = "x" * size
    for _ in range(n):
        ctx._emit("output", {"stream": "stdout", "text": "", "pad": pad}, None)  # noqa: SLF001
    return "done"


def test_output_events_with_an_extra_field_do_not_get_past_the_caps(client: Client) -> None:
    """30 MB in 60 output events with empty texts under a 1 MiB output cap and a 2 MiB record bound: at most the
    cap plus the backstop's 1 MiB margin (and one event) is stored, and the drop is recorded."""
    sid = client.submit(_padded_output, 60, 500_000, max_output="1M")
    client.wait(sid, timeout=60)
    stored = sum(len(orjson.dumps(e["payload"])) for e in client.history(sid, kinds=["output"]))
    assert stored <= 2 * MiB + 600_000, f"{stored:,} bytes of output stored under a 1 MiB cap"
    assert any(e["payload"].get("by") == "daemon" for e in client.history(sid, kinds=["output.truncated"]))
