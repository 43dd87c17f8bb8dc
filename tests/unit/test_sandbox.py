"""Sandbox building blocks without a daemon: Landlock's deny-by-splitting, bwrap's argument order, the
runner's key hand-over, the ``[sandbox]`` config section and the probe's no-new-privs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import labd.runner.sandbox as sandbox_pkg
from labd.daemon.config import ConfigError, load_config
from labd.daemon.template_launcher import hand_over_key
from labd.runner.credentials import take_key
from labd.runner.sandbox import bwrap, landlock, seccomp


def test_allowed_roots_cover_everything_but_the_hidden_paths(tmp_path: Path) -> None:
    """Siblings of a hidden path are granted, the hidden path and its ancestors are not, a path under it
    can be granted again, and symlinks are skipped (a link into a hidden tree grants nothing)."""
    hidden = tmp_path / "home"
    (hidden / "sessions" / "s1").mkdir(parents=True)
    (tmp_path / "sibling").mkdir()
    (tmp_path / "link").symlink_to(hidden)
    roots = landlock.allowed_roots([str(hidden)], allow=[str(hidden / "sessions" / "s1")])
    real = os.path.realpath(tmp_path)
    assert f"{real}/sibling" in roots and f"{real}/home/sessions/s1" in roots
    assert not any(r in (f"{real}/home", real, "/", f"{real}/link") for r in roots)
    assert "/" not in roots and "/usr" in roots


def test_bwrap_binds_the_work_directory_before_making_hidden_trees_read_only(tmp_path: Path) -> None:
    """The work directory inside a hidden home is bound back writable, and only then is the hidden tmpfs
    remounted read-only; no --unshare-net when the network is on."""
    home = tmp_path / "home"
    work = home / "sessions" / "s" / "work"
    work.mkdir(parents=True)
    argv = bwrap.wrap("/usr/bin/bwrap", ["true"], str(work), [str(home)], network=False)
    real_home = os.path.realpath(home)
    if real_home.startswith("/tmp/"):
        assert "--remount-ro" not in argv  # all of /tmp is a private tmpfs already
    else:
        assert argv.index("--bind") < argv.index("--remount-ro")
    assert "--unshare-net" in argv and argv[-2:] == ["--", "true"] and "ALL" in argv
    assert "--unshare-net" not in bwrap.wrap("/usr/bin/bwrap", ["true"], str(work), [], network=True)


def test_runner_key_is_handed_over_by_a_private_file_and_deleted_when_read(tmp_path: Path) -> None:
    """The spec sent through the template carries no key, only the path of a 0600 file that the runner
    deletes once it has read it."""
    spec = hand_over_key({"key": "ab" * 32, "workdir": str(tmp_path / "s" / "work")})
    assert "key" not in spec
    path = Path(spec["key_file"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert take_key(spec) == bytes.fromhex("ab" * 32)
    assert not path.exists()


def test_sandbox_config_section(isolated_env: Path) -> None:
    """[sandbox] is read with its defaults; unknown keys and bad values are refused with a message."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    cfg = isolated_env / "config.toml"
    assert load_config().sandbox.mechanism == "auto" and load_config().sandbox.network is False
    cfg.write_text('[sandbox]\nmechanism = "landlock"\nnetwork = true\nrequire = true\nhide = ["~/x"]\n')
    sb = load_config().sandbox
    assert (sb.mechanism, sb.network, sb.require, sb.hide) == ("landlock", True, True, ["~/x"])
    for bad in ('mechanism = "docker"', 'network = "yes"', "hide = 3", "colour = 1"):
        cfg.write_text(f"[sandbox]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"\[sandbox\]"):
            load_config()


_NNP_PROBE = r"""
import json
with open("/proc/self/status") as f:
    nnp = [l.split()[1] for l in f if l.startswith("NoNewPrivs:")]
ok = nnp == ["1"]
if ok:
    open("probe-ok", "w").write("x")
print(json.dumps({"read_hidden": "denied" if ok else "allowed", "network": "denied", "cap_eff": 0}))
"""


@pytest.mark.skipif(not seccomp.supported(), reason="no clone filter here: runners keep their privileges")
def test_the_probe_runs_with_no_new_privs_as_runners_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runners run with no-new-privs (the clone filter sets it), so a setuid bwrap fails in them; the daemon's
    sandbox probe must run under the same condition, or it reports "full" for a bwrap no runner can start. Here
    a stand-in probe program passes only if it sees ``NoNewPrivs: 1`` in /proc/self/status."""
    monkeypatch.setattr(sandbox_pkg, "_PROBE_CODE", _NNP_PROBE)
    unconfined = sandbox_pkg.Sandbox(sandbox_pkg.SandboxStatus("none", "none"), [], False)  # wrap(): argv as is
    assert sandbox_pkg._run_probe(unconfined, tmp_path) == (True, "")
