"""The built wheel installs one import name, `labd`, and lives beside python-daemon (import name `daemon`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

#: what the build needs from the repository (a copy, so building leaves no build/ or egg-info behind)
SOURCES = ["pyproject.toml", "README.md", "labd", "daemon", "runner", "ipc", "store", "frontends"]


def _pip(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # ~25 s: a wheel build in an isolated environment, then two installs
@pytest.mark.timeout(300)
def test_wheel_has_only_labd_and_coexists_with_python_daemon(tmp_path: Path) -> None:
    """`pip wheel` gives a wheel whose only top-level names are `labd` and its dist-info (no `daemon`,
    `store`, `ipc`, `runner`, `frontends`); installed with python-daemon into one target, `import daemon`
    is python-daemon's and `labd` (CLI included) still imports and runs."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                        if (REPO / name).is_dir() else {}))
    r = _pip("wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src))
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "NewConnectionError" in r.stderr):
        pytest.skip(f"no package index reachable to build with: {r.stderr.splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("labd-*.whl"))
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert top == {"labd", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert "labd/frontends/cli/app.py" in zipfile.ZipFile(wheel).namelist()

    target = tmp_path / "site"
    r = _pip("install", "--no-deps", "-q", "--target", str(target), str(wheel), "python-daemon")
    if r.returncode != 0 and "python-daemon" in r.stderr:
        pytest.skip(f"python-daemon not installable here: {r.stderr.splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    assert not any((target / name).exists() for name in ("store", "ipc", "runner", "frontends"))
    check = ("import daemon, labd, labd.daemon.server, labd.frontends.cli; "
             "assert hasattr(daemon, 'DaemonContext'), daemon.__file__; "
             f"assert labd.__file__.startswith({str(target)!r}), labd.__file__; "
             "from labd import Client; print('ok', labd.__version__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the repository's folders
    env["PYTHONPATH"] = str(target)
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok "), r.stderr
    for name in ("store", "ipc", "runner", "frontends"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=60)
        assert "No module named" in r.stderr, name
    version = subprocess.run([sys.executable, "-m", "labd", "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("labd "), version.stderr
