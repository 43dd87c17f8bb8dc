"""`labd compare`'s inputs: what the sessions were started with, where it differs, compared whole."""

from __future__ import annotations


def test_inputs_that_differ_past_the_shown_length_are_listed_where_they_differ(shared_daemon) -> None:
    """Two sessions whose ``label`` parameters differ only at their 2,001st character (a long task prompt edited
    at its end) are listed as differing, each shown from a little before the difference; before, the values were
    cut to 2,000 characters first and compared equal, so compare said the inputs were the same."""
    common = "x" * 2000
    with shared_daemon.client(timeout=60) as c:
        a, b = (c.start("demo.count", params={"n": 1, "delay": 0, "label": common + end}) for end in ("A", "B"))
        for sid in (a, b):
            assert c.wait(sid, timeout=60)["status"] == "completed"
        shown = c.compare(a, b)["inputs"]["params"]["label"]
        assert [v.endswith("x" * 50 + end) for v, end in zip(shown, "AB", strict=True)] == [True, True]
        assert all(v.startswith("...(1900 characters alike) ") for v in shown)
        same = c.start("demo.count", params={"n": 1, "delay": 0, "label": common + "A"})
        assert c.wait(same, timeout=60)["status"] == "completed"
        assert "label" not in c.compare(a, same)["inputs"]["params"]


def test_inputs_are_compared_as_values() -> None:
    """A parameter "5" (text) and 5 (a number) differ; the same mapping written in another key order does not."""
    from labd.store.compare import _inputs

    class _Store:
        def created(self, sid: str) -> dict:
            return {}

    rows = [{"id": "a", "workflow": "w", "params": {"n": "5", "m": {"x": 1, "y": 2}}},
            {"id": "b", "workflow": "w", "params": {"n": 5, "m": {"y": 2, "x": 1}}}]
    assert _inputs(_Store(), rows) == {"params": {"n": ['"5"', "5"]}}
