"""The seam every command module plugs into: global options, :func:`command`, and the per-run :class:`Ctx`.

A command module exposes ``register(sub)``; inside, each ``command(sub, name, handler, help)`` returns an
``argparse`` parser that already accepts the global options (so ``labd serve --home DIR`` and
``labd --home DIR serve`` mean the same). A handler is ``handler(args, ctx) -> exit code``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labd.frontends.cli.output import Output

if TYPE_CHECKING:
    from labd.ipc.client import Client

__all__ = ["CliError", "Ctx", "Handler", "command", "global_options", "add_json", "duration", "subcommands", "LIVE",
           "last_line", "comma_list"]

#: statuses of sessions that have not ended
LIVE = ("queued", "created", "starting", "running", "paused", "waiting_approval")


class CliError(Exception):
    """Bad usage found by the CLI itself: printed as ``labd: <message>``, exit code 2."""


def comma_list(option: str, values: str | list[str] | None, allowed: tuple[str, ...]) -> list[str] | None:
    """The values of a comma-separated (and/or repeated) option, each checked against ``allowed`` here, so that a typo
    reads ``--status: unknown value 'runing' (one of: ...)`` rather than the daemon's "field 'status' must be a list
    of ..."; None when the option was not given."""
    if not values:
        return None
    items = [v.strip() for item in ([values] if isinstance(values, str) else values) for v in item.split(",")
             if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise CliError(f"{option}: unknown value{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                       f"(one of: {', '.join(allowed)})")
    return items


class Ctx:
    """What a handler needs: the parsed options, an :class:`Output`, and a client opened on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Output(no_color=bool(getattr(args, "no_color", False)))
        self._client: Client | None = None

    @property
    def home(self) -> str | None:
        return getattr(self.args, "home", None)

    def client(self, timeout: float = 15.0) -> Client:
        """The daemon's client (raises ``LabdError`` ``no_daemon`` when none runs)."""
        if self._client is None:
            from labd.ipc.client import Client

            self._client = Client(self.home, timeout=timeout, connection_file=getattr(self.args, "connect", None))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


Handler = Callable[[argparse.Namespace, Ctx], int]


def global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options valid before or after the command. Below a command their default is SUPPRESS, so a value
    given before the command is not overwritten by the sub-parser's default."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--home", default=default, metavar="DIR",
                        help="labd home (data, database, sockets); default $LABD_HOME or the XDG data dir")
    parser.add_argument("--connect", default=default, metavar="FILE",
                        help="a daemon on another machine: a connection file from `labd remote add` "
                             "(or $LABD_CONNECTION_FILE)")
    parser.add_argument("--no-color", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="no colours (also: NO_COLOR=1 in the environment)")


_GLOBALS = argparse.ArgumentParser(add_help=False)
global_options(_GLOBALS, top=False)


def command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, help: str,
            *, aliases: tuple[str, ...] = (), description: str | None = None,
            epilog: str | None = None) -> argparse.ArgumentParser:
    """Add the command ``name`` run by ``handler``; the returned parser takes the command's own arguments."""
    p = sub.add_parser(name, help=help, description=description or help, aliases=list(aliases), epilog=epilog,
                       parents=[_GLOBALS], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=handler)
    return p


def add_json(p: argparse.ArgumentParser, what: str = "the same data as JSON") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} (stable field names; see docs/protocol.md)")


def duration(text: str) -> float:
    """An argparse ``type``: seconds from ``90``, ``90s``, ``15m``, ``1h30m`` (the units every duration option
    takes; a bad one is argparse's one-line usage error naming the option)."""
    from labd.ipc.units import UnitError, parse_duration

    try:
        return parse_duration(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """``parser``'s subcommands (argparse has no public way to reach them)."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank, stripped; ``""`` if there is none (a prompt, a request's text: what
    a session or a configuration wrote, which may be empty or only whitespace)."""
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""
