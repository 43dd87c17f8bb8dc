"""skill.import checks the whole document (field types, list items' shapes, lengths) and refuses a malformed one
with bad_request naming the field; a minimal document (name and workflow) imports, shows and starts; a malformed
skill already in the store (stored before imports were checked) makes a start fail with bad_skill naming the
field and `labd skills show` say so, never crash."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import running_daemon

pytestmark = pytest.mark.timeout(240)

BAD_DOCUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"steps": ["abc", 3]}, "steps[0]"),
    ({"parameters": 5}, "parameters"),
    ({"parameters": [["task"]]}, "parameters[0]"),
    ({"description": {}}, "description"),
    ({"description": "d" * 2001}, "description"),
    ({"steps": [{"code": "print(1)"}]}, "steps[0].code"),
    ({"steps": [{"code": ["x = 1", 2]}]}, "steps[0].code[1]"),
    ({"steps": [{"answer": 5}]}, "steps[0].answer"),
    ({"plan": [{"agent": "engineer"}]}, "plan[0].goal"),
    ({"plan": [{"goal": "g", "depends_on": [True]}]}, "plan[0].depends_on[0]"),
    ({"plan": {"goal": "g"}}, "plan"),
    ({"params": []}, "params"),
    ({"workflow": "skill:other"}, "workflow"),
    ({"workflow": 7}, "workflow"),
    ({"origin_session": "x" * 40}, "origin_session"),
    ({"agents": {"engineer": "a prompt"}}, "agents.engineer"),
    ({"files": [{"path": 3}]}, "files[0].path"),
    ({"surprise": 1}, "surprise"),
    ({"name": "bad name!"}, "name"),
]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "LABD_HOME": str(home)}


def _labd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labd", *args], capture_output=True, text=True, env=_env(home),
                          timeout=60)


def test_malformed_documents_are_refused_naming_the_field(daemon) -> None:
    """Each malformed document (the confirmed ones: steps of strings, parameters 5, description {}; and more of
    every shape the readers rely on) is refused with bad_request whose message and details.field name the field;
    nothing is stored."""
    from labd.ipc import LabdError

    with daemon.client() as c:
        for change, field in BAD_DOCUMENTS:
            doc = {"name": "bad", "workflow": "demo.count", **change}
            with pytest.raises(LabdError) as err:
                c.request("skill.import", document=doc)
            assert err.value.code == "bad_request", (change, err.value)
            assert err.value.details.get("field") == field and repr(field) in err.value.message, (change, err.value)
        assert c.request("skill.list")["skills"] == []


def test_a_minimal_document_imports_shows_and_starts(daemon, tmp_path: Path) -> None:
    """{name, workflow} imports (CLI), `labd skills show` prints it (exit 0, no traceback), and skill:NAME starts
    and completes; a planning skill with only a plan (no steps, no description) starts and completes too."""
    doc = tmp_path / "mini.json"
    doc.write_text('{"name": "mini", "workflow": "demo.count"}')
    r = _labd(daemon.home, "skills", "import", str(doc))
    assert r.returncode == 0 and "mini" in r.stdout, r.stderr
    r = _labd(daemon.home, "skills", "show", "mini")
    assert r.returncode == 0 and "demo.count" in r.stdout and "Traceback" not in r.stderr, r.stderr
    with daemon.client() as c:
        sid = c.start("skill:mini", params={"n": 1})
        assert c.wait(sid, timeout=90)["status"] == "completed"
        c.request("skill.import", document={"name": "mini-plan", "workflow": "planning_and_control",
                                            "plan": [{"goal": "Say hi"}]})
        sid = c.start("skill:mini-plan")
        assert c.wait(sid, timeout=90)["status"] == "completed"
    r = _labd(daemon.home, "skills", "show", "mini-plan")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


STORED_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "old-steps": ({"workflow": "planning_and_control", "plan": [{"goal": "g"}], "steps": ["abc", 3]}, "steps[0]"),
    "old-params": ({"workflow": "demo.count", "parameters": 5}, "parameters"),
}


def _store_bad_skills(home: Path) -> None:
    """Write malformed skills straight into the store, as an import before the checks could (no daemon runs)."""
    from labd.store.db import migrate, open_engine
    from labd.store.skills import insert_skill

    home.mkdir(parents=True, exist_ok=True)
    engine = open_engine(f"sqlite:///{home / 'labd.db'}")
    migrate(engine)
    with engine.connect() as conn:
        for name, (doc, _) in STORED_BAD.items():
            insert_skill(conn, {"name": name, "description": "", **doc}, time.time())
        conn.commit()
    engine.dispose()


def test_a_malformed_stored_skill_is_refused_at_start_and_shown_without_a_crash(isolated_env: Path) -> None:
    """Skills stored with bad shapes: starting one is bad_skill naming the field (not internal); `labd skills
    show` prints what it can, names the malformed field on stderr and exits 1, without a traceback; rm deletes."""
    from labd.ipc import LabdError

    _store_bad_skills(isolated_env)
    with running_daemon(isolated_env) as d, d.client() as c:
        for name, (_, field) in STORED_BAD.items():
            with pytest.raises(LabdError) as err:
                c.start(f"skill:{name}", params={"task": "t"})
            assert err.value.code == "bad_skill" and err.value.details.get("field") == field, err.value
            assert repr(field) in err.value.message
            r = _labd(isolated_env, "skills", "show", name)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert field.split("[")[0] in r.stderr and name in r.stdout
            assert _labd(isolated_env, "skills", "rm", name).returncode == 0


def test_readers_cope_with_a_stored_bad_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unit level, no daemon: expand_skill (what session.start calls) raises ApiError bad_skill naming the field
    for a stored malformed document, and the CLI's show renders one (steps that are not objects, a description
    that is not a text, no version) and returns 1 instead of raising."""
    from labd.daemon.api.base import ApiError
    from labd.daemon.api.skills import expand_skill
    from labd.frontends.cli.base import Ctx
    from labd.frontends.cli.skills import _show
    from labd.store.db import migrate, open_engine

    _store_bad_skills(tmp_path / "home")
    engine = open_engine(f"sqlite:///{tmp_path / 'home' / 'labd.db'}")
    migrate(engine)
    d = SimpleNamespace(store=SimpleNamespace(engine=engine))
    try:
        for name, (_, field) in STORED_BAD.items():
            with pytest.raises(ApiError) as err:
                expand_skill(d, f"skill:{name}", {"task": "t"})
            assert err.value.code == "bad_skill" and err.value.details == {"field": field}
    finally:
        engine.dispose()
    ctx = Ctx(argparse.Namespace(no_color=True))
    bad: dict[str, Any] = {"name": "x", "workflow": "w", "description": {"a": 1}, "parameters": "task",
                           "steps": ["abc", 3, {"agent": 5, "code": "print(1)"}]}
    assert _show(ctx, "x", bad) == 1
    out = capsys.readouterr()
    assert "description" in out.err and "steps[0]" in out.err and "steps[2].code" in out.err
    assert _show(ctx, "mini", {"name": "mini", "workflow": "demo.count"}) == 0


def test_a_skill_file_that_is_no_document_is_one_line_naming_it_never_a_hang(shared_daemon, tmp_path: Path) -> None:
    """`labd skills import FILE` where FILE is a FIFO, a device, a directory, JSON nested past the parser's stack or
    not UTF-8: exit 2 at once with one line naming the file and what is wrong with it. A FIFO hung the command for
    good, /dev/zero grew it without end, deep nesting was a RecursionError traceback; a good file still imports."""
    fifo = tmp_path / "fifo.skill.json"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.skill.json"
    deep.write_text("[" * 200_000)
    latin = tmp_path / "latin.skill.json"
    latin.write_bytes(b'{"name": "caf\xe9", "workflow": "demo.count"}')
    cases = [(fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
             (tmp_path, "not a regular file"), (deep, "nested too deeply"), (latin, "utf-8")]
    for path, why in cases:
        r = _labd(shared_daemon.home, "skills", "import", str(path))  # 60 s timeout: a hang fails the test
        assert r.returncode == 2, (path, r.returncode, r.stderr[-500:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-500:]
        assert str(path) in r.stderr and why in r.stderr, r.stderr
    good = tmp_path / "good.skill.json"
    good.write_text('{"name": "hand-edited", "workflow": "demo.count"}')
    r = _labd(shared_daemon.home, "skills", "import", str(good))
    assert r.returncode == 0 and "hand-edited" in r.stdout, r.stderr


def test_an_export_the_disk_cannot_hold_leaves_no_partial_file(shared_daemon, tmp_path: Path) -> None:
    """`labd skills export NAME -o FILE` where the write fails midway (here: a file size limit, EFBIG; a full disk
    is ENOSPC, the same path) is one line saying it cannot write FILE, exit 2, and FILE is not left behind. It was
    an OSError traceback leaving a truncated FILE, which the next export refused as existing (and an import of it
    would fail). With room, the export writes the whole document."""
    import resource

    with shared_daemon.client() as c:
        c.request("skill.import", document={"name": "too-big", "workflow": "demo.count", "description": "d" * 2000})
    out = tmp_path / "too-big.skill.json"

    def small_files() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    r = subprocess.run([sys.executable, "-m", "labd", "skills", "export", "too-big", "-o", str(out)],
                       capture_output=True, text=True, env=_env(shared_daemon.home), timeout=60,
                       preexec_fn=small_files)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-800:]
    assert f"cannot write {out}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    r = _labd(shared_daemon.home, "skills", "export", "too-big", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["description"] == "d" * 2000
