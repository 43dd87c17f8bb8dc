"""A skill document's schema: what ``skill.import`` accepts and what every reader (a start from the skill, ``labd skills
show``) may rely on, checked by :func:`check_skill`; the bounds a save (:mod:`labd.store.skills`) keeps to."""

from __future__ import annotations

import re
from typing import Any

from labd.ipc.functions import FUNCTION_WORKFLOW

__all__ = ["NAME", "FIELDS", "SkillError", "check_skill", "MAX_CODE", "MAX_ANSWER", "MAX_EVENTS", "MAX_STEPS"]

MAX_CODE = 20_000  # characters of code kept per step
MAX_ANSWER = 4000  # characters of a step's accepted answer kept
MAX_EVENTS = 5000  # code texts a step of a skill document may hold (an imported one)
MAX_STEPS = 10_000  # steps of a plan
#: a skill's name (``\Z``, not ``$``, which also matches before a final newline: "deploy\n" was a second skill
#: listed as "deploy")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
#: the fields of a skill document (``version`` and ``created_at`` are the store's: replaced when it is stored)
FIELDS = ("name", "version", "created_at", "description", "workflow", "origin_session", "from_node", "parameters",
          "params", "plan", "steps", "agents", "files", "sys_path")


class SkillError(ValueError):
    """A session a skill cannot be made from, or a skill that does not exist."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.field, self.details = code, field, details


def _bad(field: str, must: str) -> SkillError:
    return SkillError("bad_skill", f"field {field!r} must be {must}", field)


def _str(value: Any, field: str, limit: int, *, empty: bool = True, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or len(value) > limit or (not empty and not value):
        raise _bad(field, f"{'null or ' if nullable else ''}a string of {0 if empty else 1}-{limit} characters")


def _int(value: Any, field: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad(field, f"{'null or ' if nullable else ''}an integer 0 to 2**63-1")


def _list(value: Any, field: str, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise _bad(field, f"a list of at most {limit} {what}")
    return value


def _obj(value: Any, field: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(field, f"an object with the fields {', '.join(keys)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        where = f"{field}.{unknown[0]}" if field != "document" else unknown[0]
        raise _bad(where, f"absent: {field if field != 'document' else 'a skill document'} has only the fields "
                          f"{', '.join(keys)}")
    return value


def _ints(value: Any, field: str) -> None:
    for i, x in enumerate(_list(value, field, MAX_STEPS, "step indexes (integers)")):
        _int(x, f"{field}[{i}]")


def check_skill(doc: Any) -> None:
    """Raise :class:`SkillError` ``bad_skill`` (its ``field`` names the first field at fault, e.g.
    ``steps[1].code[0]``) unless ``doc`` is a skill document every reader can use: ``name`` and ``workflow``
    required, every other field optional but of its type, list items of their shape, texts within their
    lengths (what the store's columns hold, what :func:`extract` keeps)."""
    doc = _obj(doc, "document", FIELDS)
    if not (isinstance(doc.get("name"), str) and NAME.match(doc["name"])):
        raise _bad("name", "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    wf = doc.get("workflow")
    if not (isinstance(wf, str) and 0 < len(wf) <= 300 and wf.isprintable()) or wf.startswith("skill:"):
        raise _bad("workflow", "the workflow to start (1-300 printable characters; not another skill:)")
    if wf == FUNCTION_WORKFLOW:  # its call (the pickled function and arguments) is not in a skill: it could not run
        raise SkillError("bad_skill", "a submitted function's session cannot be a skill (its pickled call is not "
                         "part of one): submit the function again with Client.submit", "workflow")
    get = doc.get
    if "version" in doc:
        _int(get("version"), "version")
    if "created_at" in doc and (isinstance(get("created_at"), bool) or not isinstance(get("created_at"), int | float)):
        raise _bad("created_at", "a number (seconds since the epoch)")
    if "description" in doc:
        _str(get("description"), "description", 2000)
    _str(get("origin_session"), "origin_session", 32, empty=False, nullable=True)
    _str(get("from_node"), "from_node", 64, empty=False, nullable=True)
    for i, p in enumerate(_list(get("sys_path", []), "sys_path", 100, "absolute directory paths")):
        _str(p, f"sys_path[{i}]", 4096, empty=False)
        if not p.startswith("/") or "\0" in p:
            raise _bad(f"sys_path[{i}]", "an absolute directory path")
    for i, p in enumerate(_list(get("parameters", []), "parameters", 1000, "parameter names")):
        _str(p, f"parameters[{i}]", 1000, empty=False)
    if not isinstance(get("params", {}), dict):
        raise _bad("params", "an object (the workflow's parameters)")
    plan = _list(get("plan", []), "plan", MAX_STEPS, "steps {agent, goal, depends_on}")
    for i, item in enumerate(plan):
        step = _obj(item, f"plan[{i}]", ("agent", "goal", "depends_on"))
        _str(step.get("goal"), f"plan[{i}].goal", 10_000, empty=False)
        if "agent" in step:
            _str(step["agent"], f"plan[{i}].agent", 200, empty=False)
        if "depends_on" in step:
            _ints(step["depends_on"], f"plan[{i}].depends_on")
            if any(not 0 <= d < i for d in step["depends_on"]):  # an earlier step of the plan (0-based)
                raise _bad(f"plan[{i}].depends_on", f"indexes of earlier steps of the plan (0 to {i - 1})" if i
                           else "empty: the plan's first step depends on no other")
    keys = ("name", "agent", "goal", "depends_on", "code", "answer")
    for i, item in enumerate(_list(get("steps", []), "steps", MAX_STEPS, f"steps {{{', '.join(keys)}}}")):
        step, at = _obj(item, f"steps[{i}]", keys), f"steps[{i}]"
        for key, limit in (("name", 10_000), ("goal", 10_000), ("agent", 200), ("answer", MAX_ANSWER)):
            if key in step:
                _str(step[key], f"{at}.{key}", limit)
        if "depends_on" in step:
            _ints(step["depends_on"], f"{at}.depends_on")
        for j, code in enumerate(_list(step.get("code", []), f"{at}.code", MAX_EVENTS, "code texts")):
            _str(code, f"{at}.code[{j}]", MAX_CODE)
    agents = get("agents", {})
    if not isinstance(agents, dict) or len(agents) > 1000:
        raise _bad("agents", "an object of at most 1000 roles {role: {system_prompt}}")
    for role, spec in agents.items():
        _str(role, "agents (a role name)", 200, empty=False)
        if "system_prompt" in _obj(spec, f"agents.{role}", ("system_prompt",)):
            _str(spec["system_prompt"], f"agents.{role}.system_prompt", 1_000_000)
    for i, item in enumerate(_list(get("files", []), "files", 100_000, "files {path, sha256, size, step}")):
        f, at = _obj(item, f"files[{i}]", ("path", "sha256", "size", "step")), f"files[{i}]"
        _str(f.get("path"), f"{at}.path", 4096, empty=False)
        _str(f.get("sha256"), f"{at}.sha256", 128, nullable=True)
        _int(f.get("size"), f"{at}.size", nullable=True)
        _str(f.get("step"), f"{at}.step", 64, nullable=True)
