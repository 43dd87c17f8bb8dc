"""The package layout: one import name, `labd`, mapped onto the repository's top-level folders."""

import tomllib
from pathlib import Path

import labd

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"labd": "labd", "daemon": "labd.daemon", "runner": "labd.runner", "ipc": "labd.ipc", "store": "labd.store",
           "frontends": "labd.frontends"}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A new subpackage (a folder with __init__.py) must be listed, or the wheel silently lacks it."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_version_comes_from_package_metadata() -> None:
    """`labd.__version__` is the installed distribution's version: one place to change it."""
    from importlib.metadata import version

    assert labd.__version__ == version("labd")


def test_sdk_is_importable_from_the_top_level() -> None:
    """`from labd import Client` is the SDK's front door."""
    from labd import Client
    from labd.ipc.client import Client as Inner

    assert Client is Inner
