"""`labd serve` that cannot start says why in one line, with no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_ray_launcher_without_ray_installed_is_a_clear_error(isolated_env: Path, tmp_path: Path) -> None:
    """[launcher] naming a Ray cluster on a machine without Ray: `labd serve` exits 2 and tells how to install it
    (before: a LaunchError traceback, "No module named 'ray'")."""
    shadow = tmp_path / "noray"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "config.toml").write_text('[launcher]\naddress = "auto"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ["PYTHONPATH"]])}
    out = subprocess.run([sys.executable, "-m", "labd", "serve"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "Ray is not installed: pip install 'labd[ray]'" in out.stderr
