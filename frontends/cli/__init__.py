"""The ``labd`` command line: one module per command group, all clients of the public protocol.

Adding a command: write ``register(sub)`` in a module here (see :mod:`labd.frontends.cli.base` for
``command()`` and the handler signature) and list the module in ``app.COMMAND_MODULES``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    """The ``labd`` command (``argv``: its arguments, default ``sys.argv[1:]``); returns its exit status. The
    commands are loaded here, not when this package is: a Ctrl-C while they load (a second or so on a busy machine)
    exits 130 quietly, as one during a command does, instead of printing a traceback."""
    try:
        from labd.frontends.cli import app
    except KeyboardInterrupt:
        return 130
    return app.main(argv)


def __getattr__(name: str) -> Any:
    if name == "build_parser":
        from labd.frontends.cli.app import build_parser

        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
