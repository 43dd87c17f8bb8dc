"""Unit tests for ipc.events.validate: the per-kind payload schemas."""

from __future__ import annotations

from typing import Any

import pytest

from labd.ipc.events import (
    KIND_VERSION,
    NODE_ID_MAX,
    SCHEMAS,
    TERMINAL_STATUSES,
    TOKENS_MAX,
    EventError,
    quick_valid,
    validate,
)

VALID: list[tuple[str, dict[str, Any], str | None]] = [
    ("session.created", {"workflow": "demo.count", "name": "s", "params": {}, "limits": {}, "workdir": "/w"}, None),
    ("session.launched", {"pid": 123, "create_time": 1.5, "launcher": "template"}, None),
    ("session.launched", {"pid": 123, "create_time": 2, "launcher": "template"}, None),  # int is a number
    ("session.finished", {"outcome": "completed", "result": {"any": ["thing"]}}, None),
    ("session.finished", {"outcome": "failed", "error": "boom", "traceback": None}, None),  # optional None ok
    ("session.ended", {"ended_by": "monitor", "exit_code": 0}, None),
    ("output", {"stream": "stdout", "text": "hi\n"}, "n1"),
    ("log", {"level": "info", "event": "x", "fields": {"a": 1}}, None),
    ("step.started", {"name": "train", "parent_node": None}, "n1"),  # extra fields are allowed
    ("step.finished", {"name": "train", "status": "completed", "duration": 0.25}, "n1"),
    ("custom", {"name": "tick"}, None),
    ("limit.exceeded", {"limit": "memory", "measured": 10, "max": 5.0, "unit": "bytes", "action": "kill"}, None),
    ("resource.sample", {"rss": 1, "cpu_percent": 0, "num_procs": 1, "peak_rss": 2, "peak_cpu_percent": 3.5}, None),
    ("event.rejected", {"kind": "bogus", "reason": "unknown"}, None),
]


@pytest.mark.parametrize(("kind", "payload", "node"), VALID, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(VALID)])
def test_valid_payloads_are_accepted(kind: str, payload: dict[str, Any], node: str | None) -> None:
    """Well-formed payloads of many kinds pass validation."""
    validate(kind, payload, node)


def test_every_kind_is_at_version_1() -> None:
    """Each schema kind has a version entry, all 1, and terminal statuses are the four end states."""
    assert set(KIND_VERSION) == set(SCHEMAS) and set(KIND_VERSION.values()) == {1}
    assert frozenset({"completed", "failed", "cancelled", "lost"}) == TERMINAL_STATUSES


@pytest.mark.parametrize("kind", ["nope", "output@2", "", None, 5, ["output"]])
def test_unknown_kinds_are_rejected(kind: Any) -> None:
    """Kinds that are not in SCHEMAS (or not strings) are rejected."""
    with pytest.raises(EventError, match="unknown event kind"):
        validate(kind, {})


@pytest.mark.parametrize("payload", [None, [], "text", 3, [("stream", "stdout")]])
def test_non_dict_payloads_are_rejected(payload: Any) -> None:
    """The payload must be an object."""
    with pytest.raises(EventError, match="must be an object"):
        validate("output", payload)


@pytest.mark.parametrize(("kind", "payload", "field"), [
    ("output", {"stream": "stdout"}, "text"),
    ("session.launched", {"pid": 1, "launcher": "x"}, "create_time"),
    ("session.ended", {"status": "completed"}, "ended_by"),
    ("limit.exceeded", {"limit": "cpu", "measured": 1, "max": 1, "unit": "percent"}, "action"),
    ("output", {"stream": "stdout", "text": None}, "text"),  # None counts as missing
])
def test_missing_required_fields_are_rejected(kind: str, payload: dict[str, Any], field: str) -> None:
    """A required field that is absent (or None) is reported by name."""
    with pytest.raises(EventError, match=f"missing field '{field}'"):
        validate(kind, payload)


@pytest.mark.parametrize(("kind", "payload"), [
    ("output", {"stream": "stdout", "text": b"bytes"}),
    ("output", {"stream": 1, "text": "x"}),
    ("session.launched", {"pid": "123", "create_time": 1.0, "launcher": "x"}),
    ("session.launched", {"pid": 1.5, "create_time": 1.0, "launcher": "x"}),  # pid must be int
    ("session.created", {"workflow": "w", "name": "n", "params": [], "limits": {}, "workdir": "/"}),
    ("step.finished", {"name": "s", "status": "completed", "duration": "1s"}),
    ("session.finished", {"outcome": "failed", "error": 42}),  # optional field, wrong type
])
def test_wrong_types_are_rejected(kind: str, payload: dict[str, Any]) -> None:
    """A field of the wrong type is rejected even when the rest is valid."""
    node = "n1" if kind.startswith("step.") else None
    with pytest.raises(EventError, match="wrong type"):
        validate(kind, payload, node)


@pytest.mark.parametrize(("kind", "payload"), [
    ("session.launched", {"pid": True, "create_time": 1.0, "launcher": "x"}),
    ("session.launched", {"pid": 1, "create_time": False, "launcher": "x"}),
    ("step.finished", {"name": "s", "status": "completed", "duration": True}),
    ("resource.sample", {"rss": 1, "cpu_percent": True, "num_procs": 1, "peak_rss": 1, "peak_cpu_percent": 1}),
    ("session.ended", {"ended_by": "x", "exit_code": False}),
])
def test_booleans_are_not_numbers(kind: str, payload: dict[str, Any]) -> None:
    """True/False where an int or float is expected is rejected (bool subclasses int in Python)."""
    node = "n1" if kind.startswith("step.") else None
    with pytest.raises(EventError, match="boolean"):
        validate(kind, payload, node)


@pytest.mark.parametrize("kind", ["step.started", "step.finished"])
def test_step_events_need_a_node_id(kind: str) -> None:
    """Step events without a node_id are rejected; with one they pass."""
    payload = {"name": "s", "status": "completed", "duration": 1.0}
    with pytest.raises(EventError, match="node_id is required"):
        validate(kind, payload)
    validate(kind, payload, "n7")


def test_node_id_must_be_a_string() -> None:
    """A non-string node_id is rejected for any kind."""
    with pytest.raises(EventError, match="node_id must be a string"):
        validate("output", {"stream": "stdout", "text": "x"}, 7)


def test_blobs_must_match_their_sha256() -> None:
    """A blob whose text does not hash to its key is refused (blobs are shared by all sessions)."""
    import hashlib

    from labd.ipc.events import EventError, validate

    text = "x" * 5000
    good = hashlib.sha256(text.encode()).hexdigest()
    validate("agent.message", {"agent": "a", "content": {"$blob": good, "size": 5000}, "blobs": {good: text}})
    with pytest.raises(EventError, match="does not match"):
        validate("agent.message", {"agent": "a", "content": "y", "blobs": {good: text + "!"}})
    with pytest.raises(EventError, match="sha256"):
        validate("agent.message", {"agent": "a", "content": "y", "blobs": {"short": text}})


@pytest.mark.parametrize(("kind", "payload", "node_id", "what"), [
    ("custom", {"name": "x"}, "n" * (NODE_ID_MAX + 1), "node_id"),
    ("step.started", {"name": "x", "parent_node": "p" * (NODE_ID_MAX + 1)}, "n1", "parent_node"),
    ("step.started", {"name": "x", "redo_of": "r" * (NODE_ID_MAX + 1)}, "n1", "redo_of"),
    ("step.planned", {"name": "x", "parent_node": "p" * (NODE_ID_MAX + 1)}, "n1", "parent_node"),
    ("agent.turn.started", {"agent": "a", "edges": [["e" * (NODE_ID_MAX + 1), "handoff"]]}, "n1", "source node"),
    ("file.created", {"path": "p", "sha256": "f" * 65, "size": 1, "kind": "output"}, None, "sha256"),
])
def test_node_ids_longer_than_the_store_keys_are_refused(kind: str, payload: dict[str, Any], node_id: str | None,
                                                         what: str) -> None:
    """A node id over NODE_ID_MAX (64, the store's key columns) or a file sha256 over 64 is an EventError naming the
    bound, not left for a PostgreSQL store to refuse (DataError); the hot path sends such a node id to ``validate``.
    Ids of exactly 64 characters pass."""
    with pytest.raises(EventError, match=f"{what}.* must be at most 64 characters"):
        validate(kind, payload, node_id)
    assert not quick_valid("output", {"stream": "stdout", "text": ""}, "n" * (NODE_ID_MAX + 1))
    assert quick_valid("output", {"stream": "stdout", "text": ""}, "n" * NODE_ID_MAX)
    validate("step.started", {"name": "x", "parent_node": "p" * NODE_ID_MAX, "edges": [["e" * NODE_ID_MAX, "x"]]},
             "n" * NODE_ID_MAX)


@pytest.mark.parametrize(("field", "value"), [("prompt_tokens", -1), ("completion_tokens", TOKENS_MAX + 1),
                                              ("prompt_tokens", 2**63)])
def test_token_counts_outside_the_store_columns_are_refused(field: str, value: int) -> None:
    """A cost.recorded's token counts are 0 to TOKENS_MAX (2**31 - 1, PostgreSQL's INTEGER): a count outside is an
    EventError naming the field and the bound (a PostgreSQL store refused the row; SQLite one past 2**63, and the
    day's sums once they passed it); the bound itself passes."""
    payload = {"agent": "a", "model": "m", "prompt_tokens": 1, "completion_tokens": 1, "cost": 0.0, "currency": "USD",
               "offline": True}
    with pytest.raises(EventError, match=f"{field} must be 0 to 2,147,483,647"):
        validate("cost.recorded", {**payload, field: value}, None)
    validate("cost.recorded", {**payload, field: TOKENS_MAX}, None)


@pytest.mark.parametrize("cost", [-1000.0, -0.01, 1.7e308, float("inf"), float("nan"), 1e9 + 1])
def test_a_cost_outside_0_to_a_billion_dollars_is_refused(cost: float) -> None:
    """A cost.recorded's cost is 0 to 1e9 USD: a negative cost hid a session's spending, two of 1.7e308 summed to
    infinity (null over JSON) and `labd cost --all` failed for every session; NaN and infinity are refused too.
    Zero and the bound pass."""
    payload = {"agent": "a", "model": "m", "prompt_tokens": 1, "completion_tokens": 1, "currency": "USD",
               "offline": True}
    with pytest.raises(EventError, match="cost must be 0 to 1e"):
        validate("cost.recorded", {**payload, "cost": cost}, None)
    for fine in (0, 0.0, 1e9):
        validate("cost.recorded", {**payload, "cost": fine}, None)


@pytest.mark.parametrize(("kind", "payload", "node"), [
    ("step.finished", {"name": "s", "status": "completed", "duration": 1.7e308}, "n1"),
    ("step.finished", {"name": "s", "status": "completed", "duration": -1}, "n1"),
    ("tool.result", {"agent": "a", "call_id": "c", "name": "t", "status": "ok", "duration": float("nan")}, "n1"),
    ("session.resumed", {"by": "client", "budget": 1e13}, None),
    ("session.resumed", {"by": "client", "budget": -5}, None),
])
def test_durations_and_a_resumed_budget_are_bounded(kind: str, payload: dict[str, Any], node: str | None) -> None:
    """A duration (seconds) is finite, 0 to 1e10, and a resume's budget (USD) 0 to 1e12 (the most a client may
    give): a 1.7e308 s step printed a 300-digit time in `labd show`."""
    with pytest.raises(EventError, match="must be 0 to 1e"):
        validate(kind, payload, node)
    validate(kind, {**payload, ("budget" if kind == "session.resumed" else "duration"): 3.5}, node)


def test_a_node_with_more_edges_than_the_bound_is_refused() -> None:
    """A step's (or an agent turn's) ``edges`` hold at most EDGES_MAX (10,000) entries: each is a row of the DAG's
    table, and 20 events of 100,000 edges grew a store by 174 MB in 20 s. The bound itself passes."""
    from labd.ipc.events import EDGES_MAX

    edges = [["n1", "data"]] * EDGES_MAX
    validate("step.started", {"name": "join", "edges": edges}, "n2")
    for kind, payload in (("step.started", {"name": "join"}), ("step.planned", {"name": "join"}),
                          ("agent.turn.started", {"agent": "a"})):
        with pytest.raises(EventError, match="edges must be at most 10,000"):
            validate(kind, {**payload, "edges": [*edges, ["n1", "data"]]}, "n2")
