"""Workflows from where the user stands: `labd run` resolves names against the client's cwd and PYTHONPATH."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from tests.conftest import wait_until
from tests.integration.cli_support import labd

FLOWS = textwrap.dedent('''
    import helper_mod

    def _private(ctx):
        pass

    def study(ctx, n: int = 2) -> int:
        print("study", n, helper_mod.VALUE)
        return n
''')


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, **extra}


def test_module_and_file_targets_resolve_against_the_client_cwd(shared_daemon, tmp_path: Path) -> None:
    """`mypkg.flows:study`, `./flows.py:study`, `flows.py` (its single workflow) and `sub/flows.py` all run
    from a folder the daemon never saw, with no PYTHONPATH; a file's own folder is importable (helper_mod)."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "flows.py").write_text(FLOWS)
    (tmp_path / "helper_mod.py").write_text("VALUE = 'cwd'\n")
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "flows.py").write_text(FLOWS)
    (tmp_path / "sub" / "helper_mod.py").write_text("VALUE = 'sub'\n")
    for target, expect in (("mypkg.flows:study", "study 3 cwd"), ("./flows.py:study", "study 3 cwd"),
                           ("flows.py", "study 3 cwd")):
        r = labd("run", target, "-p", "n=3", "--follow", cwd=tmp_path, env=_env())
        assert r.returncode == 0, (target, r.stderr)
        assert r.stdout == f"{expect}\n", target
    r = labd("run", "sub/flows.py", "--follow", cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout == "study 2 sub\n"  # the file's folder comes first, as with `python sub/flows.py`
    ps = labd("ps", "-a", "--json")
    workflows = {s["workflow"] for s in json.loads(ps.stdout)}
    assert f"{tmp_path}/flows.py:study" in workflows and f"{tmp_path}/flows.py" in workflows
    assert "mypkg.flows:study" in workflows


def test_pythonpath_of_the_client_is_used(shared_daemon, tmp_path: Path) -> None:
    """A module found only through the client's PYTHONPATH (a relative entry, too) resolves in the runner."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "onlyhere.py").write_text("def go(ctx):\n    print('from lib')\n")
    (lib / "helper_mod.py").write_text("VALUE = 'lib'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = labd("run", "onlyhere:go", "--follow", cwd=elsewhere, env=_env(PYTHONPATH="../lib"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from lib\n"
    described = labd("workflows", "onlyhere:go", "--json", cwd=elsewhere, env=_env(PYTHONPATH=str(lib)))
    assert described.returncode == 0 and '"function": "go"' in described.stdout


def test_errors_name_the_path_tried(shared_daemon, tmp_path: Path) -> None:
    """A missing module names the directories searched; a missing file its absolute path; a file with
    several workflows lists them; nothing reaches a runner."""
    with shared_daemon.client() as c:  # the module's shared daemon: other tests' sessions are there too
        before = {r["id"] for r in c.sessions(limit=10_000)}
    r = labd("run", "nosuchmod:fn", cwd=tmp_path, env=_env())
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "nosuchmod" in r.stderr, r.stderr
    r = labd("run", "./missing.py:fn", cwd=tmp_path, env=_env())
    assert r.returncode == 2 and f"no workflow file {tmp_path}/missing.py" in r.stderr, r.stderr
    (tmp_path / "two.py").write_text("def a(ctx):\n    pass\n\ndef b(ctx):\n    pass\n")
    r = labd("run", "two.py", cwd=tmp_path, env=_env())
    assert r.returncode == 2 and "several workflows (a, b)" in r.stderr and "two.py:a" in r.stderr, r.stderr
    with shared_daemon.client() as c:
        assert {r["id"] for r in c.sessions(limit=10_000)} == before


def test_runners_are_named_in_ps(shared_daemon, tmp_path: Path) -> None:
    """A runner's command line (what ps and htop show) is `labd: <session name> (<workflow>) #<session id>`."""
    sid = labd("run", "demo.sleep", "-p", "seconds=60", "--name", "napper").stdout.strip()
    with shared_daemon.client() as c:
        pid = wait_until(lambda: c.session(sid)["pid"], timeout=30, what="the runner's pid")

        def title() -> str:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()

        wait_until(lambda: title().startswith("labd: napper"), timeout=30, what="the runner's title")
        assert title() == f"labd: napper (demo.sleep) #{sid}"
        c.kill(sid)
