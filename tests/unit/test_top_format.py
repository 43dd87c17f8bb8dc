"""`labd top`'s display formatting: truncation, sparklines, units, activity lines."""

from __future__ import annotations

from labd.frontends.top.format import (
    OutputShaper,
    activity_line,
    context_lines,
    fmt_age,
    fmt_bytes,
    fmt_cost,
    spark,
    truncate,
)
from labd.frontends.top.widgets import LIVE, status_text


def test_long_lines_are_cut_for_display_saying_how_much() -> None:
    """A line longer than the limit shows its start and the number of characters cut; short ones are kept."""
    assert truncate("abc", 5) == "abc"
    assert truncate("x" * 12, 5) == "xxxxx… (+7 chars)"
    text = OutputShaper(limit=10).output("short\n" + "y" * 1000 + "\npartial")
    assert text.split("\n") == ["short", "yyyyyyyyyy… (+990 chars)", "partial"]  # a partial line stays partial


def test_a_line_without_a_newline_stays_bounded_across_chunks() -> None:
    """A line written in 1,000 chunks of 64 KiB with no newline shows its first ``limit`` characters once, then the
    count of the rest when it ends (it grew by every chunk, with one marker each: UI review, 315 MiB in a minute);
    a log line after a partial line starts a line of its own."""
    shaper = OutputShaper(limit=10)
    shown = "".join(shaper.output("x" * 65536) for _ in range(1000))
    assert shown == "xxxxxxxxxx…"
    assert shaper.output("end\nnext") == " (+65535993 chars)\nnext"
    assert shaper.line("[i] logged") == "\n[i] logged\n"


def test_a_progress_bar_shows_its_latest_state_on_bounded_lines() -> None:
    """Carriage-return updates (tqdm, pip) show the text after the last ``\\r`` of a chunk, each chunk's on a line,
    never one line growing with every update (the ``\\r`` was deleted and the updates ran together)."""
    shaper = OutputShaper(limit=40)
    first = shaper.output("\r 10%|#    |")
    second = shaper.output("\r 20%|##   |\r 30%|###  |")
    done = shaper.output("\r100%|#####|\n")
    assert first == " 10%|#    |" and second == "\n 30%|###  |" and done == "\n100%|#####|\n"


def test_sparkline_scales_to_the_top_and_keeps_the_newest() -> None:
    """Values map onto eight block heights against ``top`` (or their max); only the last ``width`` are drawn."""
    assert spark([0, 50, 100], width=3, top=100) == "▁▅█"
    assert spark([100, 0, 0, 200], width=2) == "▁█"
    assert spark([], width=4) == "    "
    assert spark([5], width=3, top=100) == "  ▁"


def test_units() -> None:
    """Sizes in binary units, ages in the largest fitting unit, costs with enough digits."""
    assert fmt_bytes(None) == "-" and fmt_bytes(512) == "512B" and fmt_bytes(3 * 1024 ** 2) == "3.0M"
    assert fmt_age(None, 100.0) == "-" and fmt_age(40.0, 100.0) == "60s" and fmt_age(0.5, 7300.0) == "2h"
    assert fmt_cost(0) == "-" and fmt_cost(0.00012) == "$0.0001" and fmt_cost(2.5) == "$2.50"


def test_activity_lines_for_agent_events_only() -> None:
    """Agent, tool, code, cost and approval events become activity lines; output and unknown kinds do not."""
    tool = {"kind": "tool.call", "node_id": "n3", "payload": {"agent": "eng", "name": "run_code",
                                                              "arguments": {"code": "print(1)"}}}
    line = activity_line(tool)
    assert line is not None and "n3" in line.plain and "eng → run_code(" in line.plain
    cost = activity_line({"kind": "cost.recorded", "node_id": "n3", "payload": {
        "agent": "eng", "model": "m", "cost": 0.0123, "prompt_tokens": 5, "completion_tokens": 7}})
    assert cost is not None and "$0.0123" in cost.plain and "(5+7 tok)" in cost.plain
    assert activity_line({"kind": "output", "node_id": None, "payload": {"text": "x"}}) is None
    assert activity_line({"kind": "something.new", "node_id": None, "payload": {}}) is None


def test_session_filter_needs_every_word_somewhere() -> None:
    """The list's filter: each word must occur, case-insensitively, in the id, name, workflow, status or a
    key=value tag; an empty filter keeps every session; missing fields do not break it."""
    from labd.frontends.top.format import matches

    row = {"id": "a1b2c3", "name": "Study-7", "workflow": "demo.count", "status": "running",
           "tags": {"team": "vision"}}
    assert matches(row, "") and matches(row, "   ")
    assert matches(row, "study RUN") and matches(row, "team=vis") and matches(row, "a1b2 count")
    assert not matches(row, "study failed") and not matches(row, "team=nlp")
    assert matches({"id": "x", "status": "queued"}, "queued") and not matches({"id": "x", "status": "q"}, "name")


def test_dag_nodes_sort_in_creation_order_with_forked_childrens_ids() -> None:
    """The DAG tab orders node ids as they were made: n2 before n10, a forked child's f3.2 before f3.10 (not all
    children's nodes first, which the tab's newest-1,000 cap would then drop first)."""
    from labd.frontends.top.widgets import _node_key

    ids = ["n10", "f3.10", "n1", "f3.2", "n2", "f3.f1.1", "f12.1"]
    assert sorted(ids, key=_node_key) == ["n1", "n2", "f3.f1.1", "f3.2", "f3.10", "n10", "f12.1"]


def test_an_approvals_context_reads_as_code_and_one_line_per_plan_step() -> None:
    """The code a policy asks about keeps its lines; a plan's steps are a line each; other fields one line."""
    lines = context_lines({"language": "python", "code": "x = 1\nprint(x)",
                           "plan": [{"agent": "engineer", "goal": "fit"}, {"agent": "none", "goal": "report"}],
                           "limits": {"cpus": 2}, "retries": 3})
    assert lines == ["language: python", "code:", "  x = 1", "  print(x)", "plan:", "  - agent: engineer, goal: fit",
                     "  - agent: none, goal: report", "limits:", "  cpus: 2", "retries: 3"]
    assert context_lines(None) == [] and context_lines(["a"]) == ["[", '  "a"', "]"]


def test_a_queued_session_is_live_and_shows_its_place_in_the_queue() -> None:
    """Queued sessions have not ended: top lists them with the live ones (``e`` hid them as ended) and says where
    they stand in the run queue, as ``labd ps`` does."""
    assert "queued" in LIVE
    assert str(status_text("queued", {"status": "queued", "queue_position": 2})) == "queued #2"
    assert str(status_text("running", {"status": "running"})) == "running"


def test_an_ended_sessions_sparkline_is_flat_not_a_full_bar() -> None:
    """A session with one sample or none (an ended one) draws a flat baseline; Textual drew the single ``0.0`` it
    was given as a solid bar, beside "peak cpu 0%" (UI review)."""
    from rich.console import Console
    from textual.renderables.sparkline import Sparkline

    from labd.frontends.top.widgets import _line

    def drawn(samples: list[float]) -> str:
        console = Console(width=10, record=True, color_system=None)
        console.print(Sparkline(_line(samples), width=10))
        return console.export_text()

    assert "█" not in drawn([]) and "█" not in drawn([0.0])
    assert "█" in drawn([0.0, 100.0])  # two samples: a line again


def test_crlf_ends_a_line_like_lf_also_across_chunks() -> None:
    """Lines ending in CRLF (Windows-style tools, some loggers) show as lines, not each followed by an empty one
    (retest of the UI review), also when a chunk ends between the CR and the LF; a CR before more text still starts a
    new display line."""
    shaper = OutputShaper(limit=40)
    assert shaper.output("a\r\nb\r\n") == "a\nb\n"
    assert shaper.output("x\r") + shaper.output("\ny") == "x\ny"
    assert shaper.output("\r") + shaper.output("p2") == "\np2"
    assert shaper.output("abc\r") + shaper.output("") + shaper.output("x") == "abc\nx"  # an empty chunk between
