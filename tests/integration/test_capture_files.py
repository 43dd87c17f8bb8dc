"""File capture: deletions are recorded; the current state and the history are both kept."""

from __future__ import annotations


def test_a_deleted_file_is_recorded_and_no_longer_current(client) -> None:
    """A file written in one step and deleted in the next gets a ``file.deleted`` event attributed to the
    deleting step; ``session.files`` keeps its history but no longer lists it as current."""
    sid = client.start("labd_fidelityflows:delete_file")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    steps = {n["name"]: n["node_id"] for n in client.dag(sid)["dag"]["nodes"]}
    deleted = [e for e in client.history(sid) if e["kind"] == "file.deleted"]
    assert [(e["payload"]["path"], e["node_id"]) for e in deleted] == [("draft.txt", steps["remove"])]
    files = client.files(sid)
    draft = [f for f in files if f["path"] == "draft.txt"]
    assert [(f["change"], f["step"], f["current"]) for f in draft] == [("created", "write", False),
                                                                       ("deleted", "remove", False)]
    assert draft[0]["sha256"] == draft[1]["sha256"]
    assert [f["path"] for f in files if f["current"]] == ["final.txt"]


def test_concurrent_steps_never_get_a_wrong_attribution(client) -> None:
    """Two steps running at once write files at interleaved times: no file is credited to a step that did
    not write it — a file seen while both ran is ``ambiguous`` with both steps as candidates; a file
    written by a step running alone is attributed to it exactly."""
    sid = client.start("labd_fidelityflows:concurrent_writers")
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    steps = {n["name"]: n["node_id"] for n in client.dag(sid)["dag"]["nodes"]}
    files = {f["path"]: f for f in client.files(sid)}
    assert set(files) == {"a1.txt", "a2.txt", "b1.txt", "b2.txt", "c.txt"}
    for path in ("a1.txt", "a2.txt", "b1.txt", "b2.txt"):
        f = files[path]
        writer = steps[path[0].upper()]
        if f["ambiguous"]:
            assert f["node_id"] is None and writer in f["candidates"], f
            assert set(f["candidates"]) <= {steps["A"], steps["B"]}
        else:
            assert f["node_id"] == writer, f
    assert any(files[p]["ambiguous"] for p in ("a1.txt", "a2.txt", "b1.txt", "b2.txt"))
    assert files["c.txt"]["node_id"] == steps["alone"] and not files["c.txt"]["ambiguous"]
    assert files["c.txt"]["step"] == "alone"
