"""Front-ends are clients of the public protocol: no `labd.daemon` imports, except `labd serve` starting it through
`labd.daemon.main`, and no `labd.runner` or `labd.store` imports at all (the SDK and the wire are in `labd.ipc`)."""

from __future__ import annotations

import ast
from pathlib import Path

FRONTENDS = Path(__file__).resolve().parents[2] / "frontends"


def _daemon_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [(node.lineno, n) for n in names if n == "labd.daemon" or n.startswith("labd.daemon.")]
    return found


def test_frontends_import_no_daemon_module_outside_serve() -> None:
    """Every `labd.daemon` import under frontends/ sits inside the `serve` command's handler, and is of the daemon's
    one public entry point, `labd.daemon.main` (no other daemon module: they are the daemon's own to change)."""
    offenders = []
    for path in FRONTENDS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        allowed: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.name == "cmd_serve":
                allowed |= {n.lineno for n in ast.walk(fn) if hasattr(n, "lineno")}
        offenders += [f"{path.name}:{line} {name}" for line, name in _daemon_imports(tree)
                      if line not in allowed or name != "labd.daemon.main"]
    assert offenders == []
    assert any(_daemon_imports(ast.parse(p.read_text())) for p in FRONTENDS.rglob("*.py"))  # the check sees them


def test_frontends_import_neither_runner_nor_store() -> None:
    """Nothing under frontends/ imports the runner's or the store's modules (`import labd.runner...`,
    `from labd.runner... import`, `from labd import runner`)."""
    offenders = []
    for path in FRONTENDS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" if node.module == "labd" else node.module or "" for a in node.names]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n.split(".")[:2] in (["labd", "runner"], ["labd", "store"])]
    assert offenders == []
