"""New node ids of a resumed or branched runner are numbered after every number the record holds."""

from __future__ import annotations

from types import SimpleNamespace

from sqlalchemy import create_engine

from labd.store.checkpoints import max_node_number
from labd.store.schema import metadata, steps


def test_nodes_of_forked_children_count_for_the_next_number() -> None:
    """The runner's ``n<i>`` and the fork numbers of forked children's ``f<j>.<i>`` (and grandchildren's
    ``f<j>.f<k>.<i>``) count: a resumed runner numbers its nodes and forks after all of them. Other ids are
    ignored."""
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(steps.insert(), [
            {"session_id": "s", "node_id": node, "name": node, "status": "completed", "kind": "step"}
            for node in ("n1", "n2", "f7.1", "f7.f30.1", "x9", "n", "n12abc", "f")])
        conn.execute(steps.insert(), [{"session_id": "other", "node_id": "n99", "name": "n99",
                                       "status": "completed", "kind": "step"}])
    assert max_node_number(SimpleNamespace(engine=engine), "s") == 7
