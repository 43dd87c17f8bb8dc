"""How a Ray actor's death reads in a session's reason (Ray review): Ray's first line is the same for every cause,
so the line saying why and the node's address are kept."""

from __future__ import annotations

from labd.daemon.ray_driver import _reason

KILLED = """ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.
\tclass_name: Runner
\tactor_id: 1234abcd
\tpid: 555
\tnamespace: labd
\tip: 10.0.0.5
The actor is dead because it was killed by `ray.kill`."""


def test_the_cause_and_the_node_are_kept() -> None:
    """``ray.kill`` and a dead node read differently; the node's address is said; the exception's class prefix and the
    actor's other fields are not."""
    assert _reason(Exception(KILLED)) == ("Ray actor lost: The actor died unexpectedly before finishing this task. "
                                          "The actor is dead because it was killed by `ray.kill`. (node ip: 10.0.0.5)")
    node = KILLED.replace("it was killed by `ray.kill`", "its node has died")
    assert "because its node has died" in _reason(Exception(node))


def test_a_bare_exception_still_has_a_reason() -> None:
    """An exception with no text says its type; one line is kept as it is; the reason is bounded."""
    assert _reason(RuntimeError()) == "Ray actor lost: RuntimeError"
    assert _reason(Exception("gone")) == "Ray actor lost: gone"
    assert len(_reason(Exception("x" * 2000))) == 500
