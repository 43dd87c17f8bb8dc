"""Front-ends: the CLI (and, as they arrive, `labd top`, `labd ui`, `labd mcp`).

Every front-end is a client of the public protocol: it talks to the daemon through :mod:`labd.ipc`
only and never imports the daemon's private modules (the one exception is ``labd serve``, which starts
the daemon through its public entry point, :func:`labd.daemon.main.serve`).
"""
