"""What a mistyped reference is told: an id prefix that matches several sessions names them (id and name), so the
one meant can be picked; a workflow name one letter off a built-in says which was meant (power-user review)."""

from __future__ import annotations

from typing import Any

import pytest

from labd.daemon.api.base import ApiError
from labd.daemon.api.sessions import resolve_ref
from labd.runner.workflows.registry import WorkflowError, resolve


class _Store:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def session(self, ref: str) -> None:
        return None

    def find_session(self, ref: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["id"].startswith(ref)]

    def live_named(self, ref: str) -> list[dict[str, Any]]:
        return []


def test_an_ambiguous_id_prefix_names_the_sessions_it_matches() -> None:
    """``2`` matching seven sessions: the error lists the first five as ``id (name)`` and says there are more."""
    rows = [{"id": f"2{i:011x}", "name": f"sweep-{i}"} for i in range(7)]
    with pytest.raises(ApiError) as err:
        resolve_ref(_Store(rows), "2")
    assert err.value.code == "ambiguous"
    assert "matches 7 sessions: 200000000000 (sweep-0), 200000000001 (sweep-1)" in err.value.message
    assert "(sweep-4), ...; give more of the id" in err.value.message and "sweep-5" not in err.value.message


def test_a_workflow_one_letter_off_a_builtin_says_which_was_meant() -> None:
    """``demo.cont`` is not a workflow: the error asks whether ``demo.count`` was meant; a name like none says no
    such thing."""
    with pytest.raises(WorkflowError, match="did you mean 'demo.count'"):
        resolve("demo.cont")
    with pytest.raises(WorkflowError) as err:
        resolve("zzzz")
    assert "did you mean" not in str(err.value)
