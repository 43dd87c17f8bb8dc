"""The labels `labd logs A B` prefixes lines with: names, unless the shown (cut) names repeat."""

from __future__ import annotations

from labd.frontends.cli.multilogs import LABEL_WIDTH, _labels


def test_names_that_share_their_shown_part_are_told_apart_by_id() -> None:
    """A sweep's names often differ past the cut (``experiment-learning-rate-0.01`` / ``-0.1``): those sessions are
    labelled by id, not given the same label; names that differ within the cut, or are unique, are kept."""
    rows = [{"id": "a1", "name": "experiment-learning-rate-0.01"}, {"id": "b2", "name": "experiment-learning-rate-0.1"},
            {"id": "c3", "name": "baseline"}, {"id": "d4", "name": ""}, {"id": "e5", "name": "dup"},
            {"id": "f6", "name": "dup"}, {"id": "g7", "name": "run"}, {"id": "h8", "name": "run "}]
    assert len("experiment-learning-rate") == LABEL_WIDTH
    assert _labels(rows) == {"a1": "a1", "b2": "b2", "c3": "baseline", "d4": "d4", "e5": "e5", "f6": "f6",
                           "g7": "g7", "h8": "h8"}
