"""The request digest labd replay matches by: content counts, timestamps / ids / usage / own paths do not."""

from __future__ import annotations

from labd.runner.replay import approval_digest, request_digest


def _request(text: str, created: float, workdir: str) -> dict:
    return {"system": ["ROLE: engineer"], "params": {"model": "m"}, "tools": [],
            "messages": [{"type": "ModelRequest", "created_at": created,
                          "parts": [{"content": text, "created_at": created}]},
                         {"type": "ModelResponse", "response_id": f"cmpl-{created}", "usage": {"total": created},
                          "message": {"content": f"wrote {workdir}/out.json"}}]}


def test_same_conversation_in_another_session_has_the_same_digest() -> None:
    """Two runs of one conversation (other timestamps, provider ids, usage, work directory and session id)
    digest equal; a changed word, model parameter or tool does not."""
    a = request_digest(_request("Step 1", 1.0, "/h/sessions/aaa/work"), workdir="/h/sessions/aaa/work",
                       session_id="aaa")
    b = request_digest(_request("Step 1", 2.0, "/h/sessions/bbb/work"), workdir="/h/sessions/bbb/work",
                       session_id="bbb")
    assert a == b
    changed = _request("Step 2", 1.0, "/h/sessions/aaa/work")
    assert request_digest(changed, workdir="/h/sessions/aaa/work", session_id="aaa") != a
    other_model = {**_request("Step 1", 1.0, "/h/sessions/aaa/work"), "params": {"model": "n"}}
    assert request_digest(other_model, workdir="/h/sessions/aaa/work", session_id="aaa") != a
    with_tool = {**_request("Step 1", 1.0, "/h/sessions/aaa/work"), "tools": [{"name": "run_code"}]}
    assert request_digest(with_tool, workdir="/h/sessions/aaa/work", session_id="aaa") != a


def test_approval_digest_covers_question_options_and_context() -> None:
    """An approval matches only the same question with the same options and context (tuples as lists)."""
    base = approval_digest("before_step", "Run step 1?", ("approve", "reject"), {"goal": "x"})
    assert base == approval_digest("before_step", "Run step 1?", ["approve", "reject"], {"goal": "x"})
    assert base != approval_digest("before_step", "Run step 1?", ["approve"], {"goal": "x"})
    assert base != approval_digest("before_step", "Run step 1?", ["approve", "reject"], {"goal": "y"})
