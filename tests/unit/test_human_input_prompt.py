"""An agent's human-input request becomes an approval prompt within the approval bound (labd.ipc.events)."""

from __future__ import annotations

from labd.ipc.events import APPROVAL_PROMPT_MAX
from labd.runner.agents.factory import fit_prompt


def test_a_message_over_the_bound_keeps_its_start_and_end_and_says_what_was_left_out() -> None:
    """An agent message of 250,000 characters (a report that ends with its question) is cut to the bound, so the
    approval can be asked (a longer prompt raises, failing the workflow); its start and its final question stay,
    with a note of how many characters were left out."""
    text = "R" * 249_950 + " Shall I publish? "
    prompt = fit_prompt(text)
    assert len(prompt) <= APPROVAL_PROMPT_MAX
    assert prompt.startswith("R" * 1000) and prompt.endswith(" Shall I publish? ")
    left = len(text) - (APPROVAL_PROMPT_MAX - 200)
    assert f"[… {left:,} characters left out" in prompt


def test_a_message_within_the_bound_is_the_prompt_as_is() -> None:
    """Nothing is cut from a message that fits."""
    text = "x" * APPROVAL_PROMPT_MAX
    assert fit_prompt(text) is text
