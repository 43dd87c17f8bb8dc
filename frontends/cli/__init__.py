"""The ``labd`` command line: one module per command group, all clients of the public protocol.

Adding a command: write ``register(sub)`` in a module here (see :mod:`labd.frontends.cli.base` for
``command()`` and the handler signature) and list the module in ``app.COMMAND_MODULES``.
"""

from labd.frontends.cli.app import build_parser, main

__all__ = ["main", "build_parser"]
