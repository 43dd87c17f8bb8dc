"""The ``labd`` parser and ``main``: global options, ``--version``, the command modules, errors to exit codes.

Only this module turns errors into messages and exit codes: 0 ok, 1 a session failed (``run --follow``),
2 bad usage / configuration / daemon errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import labd
from labd.frontends.cli import (
    admin,
    approvals,
    completion,
    control,
    durable,
    lineage,
    listing,
    logs,
    policy,
    records,
    remote,
    retention,
    search,
    servers,
    service,
    sessions,
    skills,
)
from labd.frontends.cli.base import CliError, Ctx, global_options, subcommands
from labd.ipc.client import LabdError
from labd.ipc.units import UnitError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: each module's ``register(sub)`` adds its commands; a new command group is one more entry here
COMMAND_MODULES = [sessions, control, listing, durable, lineage, logs, approvals, records, search, skills, policy,
                   retention, admin, service, remote, servers, completion]

EPILOG = """examples:
  labd serve &                               run the daemon (foreground; use systemd or & to background)
  labd serve --detach / labd wait            in the background, returning once it answers (for scripts)
  labd service install                       a systemd user unit for this interpreter (then systemctl --user)
  labd run demo.count -p n=5 --follow        start a session and follow its output and agent activity
  labd run ./flows.py:study --memory 512M --cpus 0.5 --timeout 1h30m
  labd ps                                    live sessions with RSS / CPU / cost (-a: all)
  labd logs -f SESSION                       output and activity so far, then live (--tail 20 --timestamps)
  labd show SESSION                          status, exit reason, limits, peaks, steps
  labd result SESSION                        what it returned, once it has ended
  labd stop SESSION                          graceful stop, forced after a grace period
  labd approvals / labd approve SESSION      what waits for a human, and the answer
  labd dag SESSION                           the step graph as a tree (--format mermaid|dot|json, --newest N)
  labd paths                                 where the home, sockets, database and logs are
  labd completion bash|zsh|fish              shell completion
Commands that print records take --json (a session's raw events: labd events --json; the DAG: labd dag --format
json). Global options (--home, --no-color) go before or after the command."""


def _known_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Exit 2 on an unknown command with the nearest ones (argparse would list all forty)."""
    import difflib

    words = iter(argv)
    for word in words:
        if word in ("--home", "--connect"):  # the global options that take a value
            next(words, None)
        elif not word.startswith("-"):
            action = subcommands(parser)
            if word not in action.choices:
                close = difflib.get_close_matches(word, list(action.choices), 3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                parser.error(f"unknown command {word!r}{hint} (labd --help lists the commands)")
            return


def _negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--timeout -5m`` as ``--timeout=-5m``: argparse takes a value that starts with ``-`` and a digit (and is not
    a plain number) for an option, and said "expected one argument" instead of what is wrong with the value.
    Only for options of the command that take a value."""
    out: list[str] = []
    chosen = parser
    words = iter(argv)
    for word in words:
        if word == "--":  # what follows is positional, as it is
            out += [word, *words]
            break
        action = chosen._option_string_actions.get(word) if word.startswith("--") else None  # noqa: SLF001
        if action is not None and action.nargs is None:  # one value
            value = next(words, None)
            if value is not None and re.match(r"-[0-9.]", value):
                out.append(f"{word}={value}")
                continue
            out.append(word)
            if value is not None:
                out.append(value)
            continue
        if chosen is parser and not word.startswith("-"):
            sub = subcommands(parser).choices.get(word)
            chosen = sub if sub is not None else chosen
        out.append(word)
    return out


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser the command line chose (``labd remote list``: the ``list`` parser, not ``remote``'s)."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)  # noqa: SLF001
        name = getattr(args, action.dest, None) if action is not None and action.dest != argparse.SUPPRESS else None
        if action is None or name not in action.choices:
            return parser
        parser = action.choices[name]


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Exit 2 as argparse does, but from the (sub)command's own parser, suggesting its closest option."""
    import difflib

    sub = _chosen(parser, args)
    options = [o for a in sub._actions for o in a.option_strings]  # noqa: SLF001
    hints = [f"{e} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(e.split("=")[0], options, 1))
             else e for e in extra if e.startswith("-")]
    sub.error(f"unrecognized arguments: {' '.join(hints or extra)}")


def _given_twice(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Exit 2 (the command's usage) for an option that takes one value given twice: argparse kept the last one
    silently (`labd ps --name a --name b` listed b's sessions only: an admin's review). Counted as argparse reads
    them: ``--name a``, ``--name=a``, an abbreviation (``--na a``), a short option with its value attached (``-n5``).
    Options that collect (``-p``, ``--tag``), flags, and the global options (``--home``: before and after the
    command alike, an alias and an override) are not counted; nothing after ``--``."""
    sub = _chosen(parser, args)
    top = {o for a in parser._actions for o in a.option_strings}  # noqa: SLF001 - argparse keeps its options there
    longs = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]  # noqa: SLF001
    words = argv[:argv.index("--")] if "--" in argv else argv
    for action in sub._actions:  # noqa: SLF001
        if type(action) is not argparse._StoreAction or not action.option_strings \
                or top & set(action.option_strings):  # noqa: SLF001
            continue
        given = len([w for w in words if _names(w, action.option_strings, longs)])
        if given > 1:
            sub.error(f"argument {'/'.join(action.option_strings)}: given {given} times; it takes one value")


def _names(word: str, options: Sequence[str], longs: list[str]) -> bool:
    """Does ``word`` give one of ``options``, as argparse reads it?"""
    if word.startswith("--"):
        name = word.split("=", 1)[0]
        if name in options:
            return True
        found = [o for o in longs if o.startswith(name)]  # an abbreviation argparse takes: it names one option only
        return len(name) > 2 and len(found) == 1 and found[0] in options
    return any(len(o) == 2 and word.startswith(o) for o in options)  # -n 5 and -n5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labd", description="Run AI research sessions, each in its own process, "
                                "and keep a complete record of everything they do.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"labd {labd.__version__}")
    global_options(p, top=True)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # A character the output's encoding lacks (PYTHONIOENCODING=latin-1, an ASCII terminal) is shown as an escape
    # (`\u2713`), as `labd logs` does, instead of ending the command with a traceback
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    try:
        parser = build_parser()
    except KeyboardInterrupt:  # Ctrl-C while the commands' modules load
        return 130
    argv = _negative_values(parser, sys.argv[1:] if argv is None else argv)
    _known_command(parser, argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser (its usage, not labd's), with the nearest option it has
        _unrecognized(parser, args, extra)
    _given_twice(parser, args, argv)
    ctx = Ctx(args)
    try:
        code = int(args.handler(args, ctx))
        sys.stdout.flush()  # here, not at exit: a reader that went away is a quiet exit, not a traceback
        return code
    except LabdError as exc:  # the message may quote a session's names or output: made safe for a terminal
        print(ctx.out.safe(f"labd: {exc.message} [{exc.code}]", err=True), file=sys.stderr)
        return 2
    except (CliError, UnitError) as exc:
        print(ctx.out.safe(f"labd: {exc}", err=True), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`labd events S | head`): quiet exit, and no second error when Python flushes
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        ctx.close()
