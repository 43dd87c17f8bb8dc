"""The README's workflow example runs as written (so the README stays true)."""

from __future__ import annotations

import re
import shutil

from tests.conftest import REPO, wait_until


def test_the_readme_workflow_example_runs(daemon) -> None:
    """The example module from README.md, loaded by import path, runs its agent (tracked), waits for the
    approval, and returns the human's decision."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# mypkg/flows\.py.*?)```", readme, re.S)
    assert code, "README example not found"
    pkg = REPO / "tests" / "support" / "readme_example_pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "flows.py").write_text(code.group(1))
    try:
        with daemon.client() as c:
            sid = c.start("readme_example_pkg.flows:study")
            ap = wait_until(lambda: c.approvals(sid), timeout=60, what="the review approval")[0]
            assert ap["kind"] == "review" and ap["prompt"].startswith("Accept? DONE")
            c.approve(sid)
            final = c.wait(sid, timeout=60)
            assert final["status"] == "completed"
            result = next(c.history(sid, kinds=["session.finished"]))["payload"]["result"]
            assert result["accepted"] is True and result["answer"].startswith("DONE")
            kinds = {e["kind"] for e in c.history(sid)}
            assert {"agent.turn.started", "llm.request", "code.execution", "file.created"} <= kinds
    finally:
        shutil.rmtree(pkg, ignore_errors=True)
