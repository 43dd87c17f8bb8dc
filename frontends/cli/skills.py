"""`labd skills`: save what made a session work, list / search / show / delete / export / import skills.

Run one with `labd run skill:NAME -p param=value`."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from labd.frontends.cli.base import CliError, Ctx, add_json, command
from labd.frontends.cli.output import counted
from labd.ipc.safe_files import read_regular
from labd.ipc.skills import huge_number

__all__ = ["register"]

#: the largest file `labd skills import` reads (an export is indented JSON, larger than the document the request
#: carries, which the daemon's ``max_message`` bounds: 16 MiB by default)
MAX_IMPORT_FILE = 256 * 1024 * 1024


def cmd_skills(args: argparse.Namespace, ctx: Ctx) -> int:
    action = args.action or "list"
    # a save reads the session's whole record (a long one takes a while): a 15 s wait timed out, and the save went on
    c = ctx.client(timeout=120.0 if action in ("save", "import") else 15.0)
    if action == "list":
        body = {"search": args.search} if args.search else {}
        rows = c.request("skill.list", **body)["skills"]
        if args.json:
            ctx.out.json(rows)
        elif not rows:
            ctx.out.line(f"no skill matches {args.search!r}" if args.search
                         else "no skills yet: labd skills save SESSION --name NAME")
        else:
            ctx.out.table(["NAME", "VERSION", "WORKFLOW", "FROM", "SAVED", "DESCRIPTION"],
                          [[r["name"], str(r["version"]), r["workflow"], r["origin_session"] or "",
                            datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M"),
                            r["description"][:60]] for r in rows])
        return 0
    if action == "save":
        if not args.session or not args.name:
            raise CliError("usage: labd skills save SESSION --name NAME [--param P] [--from NODE]")
        # keyed and retried once with the key when no reply comes in time: a lost reply never saves a second version
        r = c.save_skill(args.session, args.name, parameters=args.param or [], description=args.description or "",
                         from_node=args.from_node or None)
        if args.json:
            ctx.out.json(r)
            return 0
        given = "".join(f" -p {p}=..." for p in args.param or [])  # each run must give them
        saved = c.request("skill.get", name=r["name"], version=r["version"])
        ctx.out.line(f"saved skill {r['name']} version {r['version']}; run it with: labd run skill:{r['name']}{given}")
        ctx.out.line(f"its runs {_REUSES.get(saved.get('reuses'), 'reuse its params')}"
                     + ("" if saved.get("reuses") == "plan" else f" ({saved['skill']['workflow']} takes no saved "
                        "plan: each run does its work again)"))
        return 0
    name = args.session  # show / rm / export take the skill's name as the positional argument
    if action == "import":
        if not name:
            raise CliError("usage: labd skills import FILE [--name NAME]")
        try:  # a regular file only: a FIFO named by mistake hung the command, /dev/zero grew it without end
            doc = json.loads(read_regular(Path(name), MAX_IMPORT_FILE).decode())
        except OSError as exc:
            raise CliError(f"cannot read a skill document from {name}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CliError(f"cannot read a skill document from {name}: {exc}") from None
        except RecursionError:  # nested past the parser's stack: was a traceback
            raise CliError(f"cannot read a skill document from {name}: arrays or objects nested too deeply") \
                from None
        huge = huge_number(doc)
        if huge:  # the wire would carry it as a text: the skill would change without a word
            raise CliError(f"cannot import {name}: {huge} is a number too large to keep exactly (more than 64 bits)")
        r = c.import_skill(doc, args.name or None)  # keyed and retried as a save
        ctx.out.json(r) if args.json else ctx.out.line(f"imported skill {r['name']} version {r['version']}")
        return 0
    if not name:
        raise CliError(f"usage: labd skills {action} NAME")
    # NAME@VERSION as `labd run skill:NAME@VERSION` takes it (show and export; rm deletes every version)
    name, at, number = name.partition("@")
    if at and action == "rm":
        raise CliError(f"labd skills rm deletes every version of a skill: labd skills rm {name}")
    if at and not (number.isascii() and number.isdigit() and int(number) > 0):
        raise CliError(f"the version after @ must be a version number (1, 2, ...), not {number!r}")
    version = {"version": int(number)} if at else {}
    if action == "show":
        got = c.request("skill.get", name=name, **version)
        if args.json:
            ctx.out.json(got["skill"])
            return 0
        return _show(ctx, name, got["skill"], got.get("reuses"), args.code)
    if action == "rm":
        r = c.request("skill.delete", name=name)
        ctx.out.line(f"deleted skill {r['name']} ({counted(r['versions'], 'version')})")
        return 0
    if action == "export":
        doc = c.request("skill.get", name=name, **version)["skill"]
        if args.output == "-":  # to stdout: labd skills export NAME -o - > f.json
            ctx.out.json(doc)
            return 0
        default = f"{name}{'@' + number if at else ''}.skill.json"
        out = Path(args.output or default)
        if out.is_dir():  # -o DIR: the default name in it ("DIR exists: remove it" was the answer)
            out = out / default
        try:  # never over an existing file (an export of another version, or another skill)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise CliError(f"{out} exists: remove it, or name another file with -o (-o - writes to stdout)") from None
        except OSError as exc:
            raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
        try:  # a disk that fills midway: no partial export left behind (a later export refused it as existing)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2)
        except OSError as exc:
            out.unlink(missing_ok=True)
            raise CliError(f"cannot write {out}: {exc.strerror or exc}; nothing was written") from None
        ctx.out.line(f"wrote {out}")
        return 0
    raise CliError(f"unknown action {action!r}")


#: what the daemon's skill.get ``reuses`` means for a run of the skill
_REUSES = {"plan": "reuse its plan (no planning again) and give each step the code that worked",
           "params": "reuse its params only"}


def _show(ctx: Ctx, name: str, doc: dict[str, Any], reuses: str | None = None, with_code: bool = False) -> int:
    """A skill in human form. Every field but name and workflow is optional (a missing one is shown empty); one
    of the wrong shape (a skill stored before imports were checked) is shown as such, named on stderr, and the
    exit code is 1 (``labd run skill:NAME`` refuses such a skill). ``with_code``: each step's code and answer too, as a
    run gives them to its agent (an imported skill's code is read before it is run)."""
    bad: list[str] = []

    def text(value: Any, field: str, default: str = "") -> str:
        if value is None:
            return default
        if isinstance(value, str):
            return value
        bad.append(field)
        return f"(not a text: {json.dumps(value)[:60]})"

    params = doc.get("parameters") or []
    if not (isinstance(params, list) and all(isinstance(p, str) for p in params)):
        bad.append("parameters")
        params = [json.dumps(params)[:60]]
    ctx.out.fields([("skill", f"{text(doc.get('name'), 'name', name)} v{doc.get('version')}"),
                    ("workflow", text(doc.get("workflow"), "workflow")),
                    ("from session", text(doc.get("origin_session"), "origin_session")),
                    ("description", text(doc.get("description"), "description")),
                    ("parameters", ", ".join(params) or "(none: defaults below)"),
                    ("defaults", json.dumps(doc.get("params", {}))[:200]),
                    ("runs", _REUSES.get(reuses or "", "?"))]
                   # directories a run imports from, ahead of the installed modules: read before running it
                   + ([("imports from", ", ".join(str(p) for p in doc["sys_path"]))] if doc.get("sys_path") else []))
    steps = doc.get("steps") or []
    if not isinstance(steps, list):
        bad.append("steps")
        steps = []
    for i, st in enumerate(steps, 1):
        if not isinstance(st, dict):
            bad.append(f"steps[{i - 1}]")
            ctx.out.line(f"  {i}. (not a step: {json.dumps(st)[:60]})")
            continue
        code = st.get("code") or []
        if not isinstance(code, list):
            bad.append(f"steps[{i - 1}].code")
            code = []
        runs = f"  ({len(code)} code runs)" if code else ""
        agent = text(st.get("agent"), f"steps[{i - 1}].agent", "?")
        goal = text(st.get("goal"), f"steps[{i - 1}].goal") or text(st.get("name"), f"steps[{i - 1}].name")
        label = "" if agent == "none" else f"[{agent}] "  # a workflow without a plan: no role
        ctx.out.line(f"  {i}. {label}{goal}{runs}")
        if with_code:
            for j, ran in enumerate(code, 1):
                ctx.out.line(f"     code {j}:")
                for line in str(ran).splitlines():
                    ctx.out.line("       " + line)
            if st.get("answer"):
                ctx.out.line(f"     answer: {text(st.get('answer'), f'steps[{i - 1}].answer')}")
    if bad:
        ctx.out.line(f"labd: skill {name} has malformed fields ({', '.join(bad)}): labd run skill:{name} refuses it; "
                     f"export it, fix them and import it again", err=True)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "skills", cmd_skills, "reusable skills from successful sessions (list, save, show, rm, "
                "export, import)", epilog="examples:\n  labd skills save 3f2a --name fit-curve --param task\n"
                "  labd run skill:fit-curve -p task='Fit the 2024 data'\n  labd skills show fit-curve@1\n"
                "  labd skills --search plot\n(one command with an ACTION: labd skills save --help shows this too)")
    s.add_argument("action", nargs="?", choices=["list", "save", "show", "rm", "export", "import"])
    s.add_argument("session", nargs="?", metavar="SESSION|NAME|FILE",
                   help="save: the session; show/export: the skill (NAME, the latest version, or NAME@VERSION); "
                   "rm: the skill (every version); import: the file")
    s.add_argument("--name", help="save/import: the skill's name")
    s.add_argument("--description", help="save: what the skill does (default: the session and workflow it came "
                   "from); list --search finds it")
    s.add_argument("--param", action="append", metavar="P",
                   help="save: a parameter of the session that each run must give (repeat)")
    s.add_argument("--from", dest="from_node", metavar="NODE", help="save: only this step and the ones after it")
    s.add_argument("--search", help="list: only skills whose name, description or content contains this")
    s.add_argument("--code", action="store_true", help="show: each step's code and answer too, as a run gives them "
                   "to the step's agent (read an imported skill's code before you run it)")
    s.add_argument("--output", "-o", help="export: the file to write (default NAME.skill.json; a directory: that name "
                   "in it; never over an existing file; - for stdout)")
    add_json(s)
