"""Several processes titled as one session's runner at a daemon's start (the real runner and a same-user impostor:
a title is no proof, daemon/orphans.py): the one adopted is the one the session's signed ``hello`` names, whatever
order they were found in; proof without that hello yet waits for it (until the claim's deadline)."""

from __future__ import annotations

from typing import Any

from labd.daemon.orphans import Claims

ROW = {"id": "abc123def456", "limits": {}}
IMPOSTOR, RUNNER = (100, 1.0), (200, 2.0)


def _settle(claims: Claims) -> list[tuple[str, Any]]:
    adopted: list[tuple[str, Any]] = []
    claims.settle(lambda row, found: adopted.append((row["id"], found)))
    return adopted


def test_the_runner_its_hello_names_is_adopted_not_the_impostor() -> None:
    """Found in either order, the process whose pid the hello carries is adopted."""
    for found in ([IMPOSTOR, RUNNER], [RUNNER, IMPOSTOR]):
        claims = Claims(proven=lambda _sid: True, hello=lambda _sid: RUNNER)
        claims.add(dict(ROW), list(found), queued=False)
        assert _settle(claims) == [(ROW["id"], RUNNER)]


def test_proof_without_the_hello_waits_for_it_when_several_are_found() -> None:
    """Signed frames came but not yet the hello (they are read a moment apart): nothing is adopted until it comes;
    with a single process found there is nothing to choose and it is adopted at once."""
    said: dict[str, tuple[int, float]] = {}
    claims = Claims(proven=lambda _sid: True, hello=said.get)
    claims.add(dict(ROW), [IMPOSTOR, RUNNER], queued=False)
    assert _settle(claims) == [] and ROW["id"] in claims
    said[ROW["id"]] = RUNNER
    assert _settle(claims) == [(ROW["id"], RUNNER)]
    one = Claims(proven=lambda _sid: True, hello=lambda _sid: None)
    one.add(dict(ROW), [RUNNER], queued=False)
    assert _settle(one) == [(ROW["id"], RUNNER)]


def test_at_the_deadline_without_a_hello_the_first_found_is_adopted() -> None:
    """A proven runner that never said which process it is (a runner from before hellos carried a pid) is not
    left unadopted: at the deadline the first process found is taken, as before."""
    claims = Claims(proven=lambda _sid: True, hello=lambda _sid: None, wait=0.0)
    claims.add(dict(ROW), [IMPOSTOR, RUNNER], queued=False)
    assert _settle(claims) == [(ROW["id"], IMPOSTOR)]
