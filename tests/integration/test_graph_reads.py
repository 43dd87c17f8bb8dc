"""Reads of the newest part of a session's graph: ``session.dag`` with ``newest`` and ``session.files`` with
``since``, what ``labd top``'s DAG tab and ``labd dag --newest`` read of a days-long session instead of its whole
record."""

from __future__ import annotations

from typing import Any

import pytest

from labd.ipc import LabdError


@pytest.fixture(scope="module")
def rounds(module_daemon: Any) -> tuple[Any, str]:
    """A completed ``graph_rounds`` session of 12 rounds on the module's daemon, and a client of it."""
    c = module_daemon.client()
    sid = c.start("labd_testflows:graph_rounds")
    final = c.wait(sid, timeout=120)
    assert final["status"] == "completed", final["reason"]
    yield c, sid
    c.close()


def test_the_newest_nodes_come_with_their_whole_rollups_and_the_edges_between_them(rounds: tuple[Any, str]) -> None:
    """``newest`` N answers the N most recently started nodes in start order (as the whole graph orders them),
    each with the roll-up the whole graph gives it, only the edges whose both ends are among them, and how many
    older nodes it left out; a ``newest`` at least the graph's size answers the whole graph, with no count."""
    c, sid = rounds
    whole = c.dag(sid)
    assert "nodes_omitted" not in whole
    nodes, edges = whole["dag"]["nodes"], whole["dag"]["edges"]
    assert len(nodes) >= 25  # the phase, 12 rounds and 12 turns at least
    assert {e["type"] for e in edges} >= {"contains", "sequence"}
    part = c.dag(sid, newest=7)
    assert part["nodes_omitted"] == len(nodes) - 7
    assert part["dag"]["nodes"] == nodes[-7:]  # the same nodes, with the same roll-ups (calls, tokens, cost)
    assert sum(n["calls"] for n in part["dag"]["nodes"]) > 0
    kept = {n["node_id"] for n in nodes[-7:]}
    expected = [e for e in edges if e["src"] in kept and e["dst"] in kept]
    assert expected and sorted(part["dag"]["edges"], key=str) == sorted(expected, key=str)
    assert c.dag(sid, newest=len(nodes)) == whole


def test_a_rendered_part_of_the_graph_names_only_its_nodes(rounds: tuple[Any, str]) -> None:
    """Mermaid and dot of the newest nodes draw those nodes and no edge to a node left out, and the reply
    says how many were left out."""
    c, sid = rounds
    nodes = c.dag(sid)["dag"]["nodes"]
    for fmt in ("mermaid", "dot"):
        reply = c.dag(sid, fmt, newest=3)
        assert reply["dag"] is None and reply["nodes_omitted"] == len(nodes) - 3
        text = reply["text"]
        assert all(n["node_id"] in text for n in nodes[-3:])
        assert nodes[0]["node_id"] not in text  # the phase, the oldest node


def test_files_since_a_seq_are_the_rows_after_it_with_their_steps(rounds: tuple[Any, str]) -> None:
    """``since`` answers exactly the history rows after that seq, each with the same step, step node and
    ``current`` flag as in the whole history: also a file an agent turn wrote, whose step is found by
    climbing from the turn, when the step itself started before ``since``."""
    c, sid = rounds
    whole = c.files(sid)
    assert len(whole) >= 24  # a file per turn and one per step
    dag = c.dag(sid)["dag"]["nodes"]
    last_round = [n for n in dag if n["name"] == "round 12"][0]
    turn = [n for n in dag if n["parent_node"] == last_round["node_id"]][0]
    since = turn["start_seq"]  # after the step started: its turn's file is in, the step's start is not
    part = c.files(sid, since=since)
    assert part == [f for f in whole if f["seq"] > since]
    by_turn = [f for f in part if f["node_id"] == turn["node_id"]]
    assert by_turn and all(f["step"] == "round 12" and f["step_node"] == last_round["node_id"] for f in by_turn)
    assert c.files(sid, since=0) == whole


@pytest.mark.parametrize("body, field", [({"newest": 0}, "newest"), ({"newest": 100_001}, "newest"),
                                         ({"newest": "5"}, "newest"), ({"newest": True}, "newest"),
                                         ({"newst": 5}, "newst")])
def test_a_bad_newest_is_refused(rounds: tuple[Any, str], body: dict[str, Any], field: str) -> None:
    """``newest`` must be 1 to 100,000, and a misspelt filter is refused rather than ignored (the whole graph
    answered as if none had been asked for)."""
    c, sid = rounds
    with pytest.raises(LabdError) as err:
        c.request("session.dag", session=sid, **body)
    assert err.value.code == "bad_request" and field in str(err.value)


@pytest.mark.parametrize("body, field", [({"since": -1}, "since"), ({"since": 1.5}, "since"),
                                         ({"sinse": 3}, "sinse")])
def test_a_bad_since_is_refused(rounds: tuple[Any, str], body: dict[str, Any], field: str) -> None:
    """``session.files``' ``since`` is a seq (0 or more), and a misspelt one is refused."""
    c, sid = rounds
    with pytest.raises(LabdError) as err:
        c.request("session.files", session=sid, **body)
    assert err.value.code == "bad_request" and field in str(err.value)


def test_cost_without_calls_has_the_same_sums_and_no_call_list(rounds: tuple[Any, str]) -> None:
    """``session.cost`` with ``calls`` false answers the same totals and groups, summed by the store, without the
    list of every call (what the CLI's tables, the dashboard and MCP read: a days-long session makes 100,000 calls);
    ``calls`` must be true or false."""
    c, sid = rounds
    whole = c.cost(sid)
    sums = c.cost(sid, calls=False)
    assert whole["total"]["calls"] == len(whole["calls"]) >= 12 and whole["total"]["offline"] is True
    assert "calls" not in sums and {k: v for k, v in sums.items() if k != "total"} == {
        k: v for k, v in whole.items() if k not in ("calls", "total")}
    assert sums["total"] == whole["total"]  # one sum both ways, to the last digit
    assert whole["total"]["cost"] == pytest.approx(sum(x["cost"] for x in whole["calls"]))
    assert whole["total"]["prompt_tokens"] == sum(x["prompt_tokens"] for x in whole["calls"])
    with pytest.raises(LabdError) as err:
        c.request("session.cost", session=sid, calls="no")
    assert err.value.code == "bad_request" and "calls" in str(err.value)
