"""`labd remote add|list|rm`: credentials for clients on other machines (TCP + CurveZMQ)."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, command

__all__ = ["register"]

#: a remote client's name, as the daemon's remote.add takes it (docs/protocol.md)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def register(sub: Any) -> None:
    s = command(sub, "remote", cmd_remote, "clients on other machines (needs `labd serve --listen tcp://...`)")
    rsub = s.add_subparsers(dest="remote_cmd", required=True, metavar="ACTION")
    a = rsub.add_parser("add", help="authorise a new client; writes its connection file (keep it secret)")
    a.add_argument("name")
    a.add_argument("--host", help="the address the client reaches this machine by (default: the listen host)")
    a.add_argument("--output", "-o", help="where to write the connection file (default: ./<name>.labd.json)")
    ls = rsub.add_parser("list", help="authorised clients and the TCP endpoints")
    r = rsub.add_parser("rm", help="revoke a client's key")
    r.add_argument("name")
    for p in (s, a, ls, r):  # `labd remote --json list` and `labd remote list --json` alike
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if p is not s else False,
                       help="print the reply as JSON")


def cmd_remote(args: argparse.Namespace, ctx: Ctx) -> int:
    c = ctx.client()
    if args.remote_cmd == "add":
        body: dict[str, Any] = {"name": args.name}
        if args.host:
            body["host"] = args.host
        if not NAME.fullmatch(args.name):  # said before a file named after it is made (the daemon checks it too)
            raise CliError(f"a remote client's name must be 1-64 letters, digits, '.', '_' or '-' (the first a letter "
                           f"or digit), not {args.name!r}")
        out = Path(args.output or f"{args.name}.labd.json")
        # The file is made before the client is authorised, and the client revoked if the file cannot be written: a
        # key issued with nowhere to go would stay authorised, held by no one, and block its name
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            why = "it exists (choose another with --output)" if isinstance(exc, FileExistsError) else exc.strerror
            raise CliError(f"cannot write the connection file {out}: {why}; no client was authorised") from None
        with os.fdopen(fd, "w") as f:
            try:
                r = c.request("remote.add", **body)
            except BaseException:
                out.unlink(missing_ok=True)
                raise
            try:
                json.dump(r["connection"], f, indent=2)
                f.flush()
            except OSError as exc:
                c.request("remote.remove", name=args.name)
                out.unlink(missing_ok=True)
                raise CliError(f"cannot write the connection file {out}: {exc.strerror}; the client {args.name!r} "
                               "was revoked again") from None
        ctx.out.line(f"wrote {out} (mode 0600). On the other machine: labd --connect {out.name} ps")
        return 0
    if args.remote_cmd == "list":
        r = c.request("remote.list")
        if args.json:
            ctx.out.json(r)
        else:
            ctx.out.line(f"listening: {', '.join(r['listen']) if r['listen'] else 'no (start with --listen tcp://...)'}")
            for name in r["clients"]:
                ctx.out.line(f"  {name}")
        return 0
    r = c.request("remote.remove", name=args.name)
    ctx.out.line(f"revoked {r['name']}")
    return 0
