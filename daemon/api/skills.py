"""Skills requests: save a skill from a completed session, list / search / show / delete / import them.

Running one is ``session.start`` with workflow ``skill:NAME`` (or ``skill:NAME@VERSION``), see
:func:`expand_skill`. Writes go through ingest, the store's only writer.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson

from labd.daemon.api.base import DEFERRED, ApiError, Request, register
from labd.daemon.api.roles import agent_roles
from labd.daemon.api.sessions import resolve_session
from labd.daemon.api.start import digest_of, idempotency_key
from labd.daemon.reads import Read
from labd.ipc.workflows import BUILTINS
from labd.store.skills import NAME, SkillError, check_skill, extract, get_skill, list_skills, skill_by_key

__all__ = ["expand_skill", "reuses", "PLAN_WORKFLOWS"]

#: workflows that can start from a saved plan (they take ``plan`` and ``hints`` parameters); a skill of any other
#: workflow reuses its params only (its reply to skill.save says which: ``reuses``)
PLAN_WORKFLOWS = {"planning_and_control", "hitl"}


NAME_HINT = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def _name(req: Request) -> str:
    return str(req.arg("name", str, check=lambda n: NAME.match(n) is not None, hint=NAME_HINT))


def _idempotency(req: Request, asked: dict[str, Any]) -> tuple[str | None, str | None]:
    """The request's ``idempotency_key`` (None without one) and the digest of what it ``asked`` for, as a start's
    are (:mod:`labd.daemon.api.start`): a retry with the key gets the version the first attempt stored, another
    request with it ``idempotency_conflict``."""
    key = idempotency_key(req)
    return (None, None) if key is None else (key, digest_of(asked))


def _stored(req: Request, key: str | None, digest: str | None) -> dict[str, Any] | None:
    """The answer to a retry whose first attempt is already stored (one indexed read, at once: a client that timed
    out retries on the same short timeout, and a save read and wrote the whole record again to answer it), else
    None. A retry that comes while its first attempt is still being written is answered by the writer."""
    if key is None:
        return None
    try:
        with req.daemon.store.engine.connect() as conn:
            first = skill_by_key(conn, key, digest)
    except SkillError as exc:
        raise _skill_error(exc) from None
    return None if first is None else {"name": first[0], "version": first[1], "replayed": True}


def reuses(workflow: str) -> str:
    """What a run of a skill of ``workflow`` takes from it: ``plan`` (the plan, and the code that worked as each
    step's hint: no planning again) or ``params`` (its parameters only: the workflow takes no saved plan)."""
    return "plan" if workflow in PLAN_WORKFLOWS else "params"


def _skill_error(exc: SkillError) -> ApiError:
    return ApiError(exc.code, str(exc), {**(exc.details or {}), **({"field": exc.field} if exc.field else {})} or None)


def _usable(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored skill document checked before it is used: one stored before ``skill.import`` checked documents
    (or written by hand) is ``bad_skill`` naming the field, never a crash of the request."""
    try:
        check_skill(doc)
    except SkillError as exc:
        raise ApiError("bad_skill", f"skill {doc.get('name')!r} version {doc.get('version')} cannot be used: {exc} "
                       "(labd skills export it, fix the field, labd skills import it)", {"field": exc.field}) from None
    return doc


def expand_skill(d: Any, ref: str, params: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``skill:NAME[@V]`` -> (workflow, params for it, {name, version, origin_session, sys_path}); given params win
    over the skill's, and every parameter the skill declared must be given. ``sys_path``: where the skill's session
    imported its workflow from (a run looks there after its own client's directories)."""
    name, at, version = ref.removeprefix("skill:").partition("@")
    if not NAME.match(name):  # `skill:` alone answered "no skill ''" (not_found)
        raise ApiError("bad_request", f"{ref!r}: the skill's name must be {NAME_HINT} (skill:NAME or "
                       "skill:NAME@VERSION)")
    if at and not re.fullmatch(r"[1-9][0-9]{0,8}", version):  # not "the latest" by accident; ASCII digits only
        raise ApiError("bad_request", f"{ref!r}: the version after @ must be a version number (1, 2, ...)")
    try:
        doc = _usable(get_skill(d.store.engine, name, int(version) if at else None))
    except SkillError as exc:
        raise _skill_error(exc) from None
    missing = [p for p in doc.get("parameters", []) if p not in params]
    if missing:
        raise ApiError("bad_params", f"skill {name!r} needs parameters {missing} (-p {missing[0]}=...)",
                       {"params": {p: "required by the skill" for p in missing}})
    out = {**doc.get("params", {}), **params}
    # given ones win here too (they were overwritten); the skill's hints fit the skill's plan only
    if doc["workflow"] in PLAN_WORKFLOWS and doc.get("plan") and "plan" not in params:
        out["plan"] = doc["plan"]
        out.setdefault("hints", [_hint(s) for s in doc.get("steps", [])])
    # a built-in workflow (no module or file named) imports nothing from the session's directories
    own_code = doc["workflow"] not in BUILTINS
    return doc["workflow"], out, {"name": doc["name"], "version": doc["version"],
                                  "origin_session": doc.get("origin_session"),
                                  "sys_path": (doc.get("sys_path") or []) if own_code else []}


def _hint(step: dict[str, Any]) -> str:
    """What worked in a step, given to its agent as instructions (code that ran successfully, the answer)."""
    parts = []
    if step.get("code"):
        parts.append("Code that worked for this step before:\n" + "\n---\n".join(step["code"])[:8000])
    if step.get("answer"):
        parts.append("The answer that was accepted then: " + step["answer"][:1000])
    return "\n".join(parts)


@register
class SaveSkill(Request):
    type = "skill.save"

    def execute(self) -> Any:  # a generator: the skill is extracted on a read worker
        # a misspelt `parameters` saved a skill whose runs need none
        self.only("session", "name", "description", "parameters", "from_node", "idempotency_key",
                  done="nothing was saved")
        ref = self.arg("session", str, check=lambda s: 0 < len(s) <= 200, hint="a session id or name")
        name = _name(self)
        description = self.arg("description", str, "", check=lambda s: len(s) <= 2000, hint="≤ 2000 characters")
        parameters = self.arg("parameters", list, [], check=lambda p: all(isinstance(x, str) for x in p),
                              hint="a list of parameter names")
        twice = sorted(p for p, n in Counter(parameters).items() if n > 1)
        if twice:  # saved as [task, task], and its runs were told to give -p task=... twice
            raise ApiError("bad_request", f"parameter {twice[0]!r} is named more than once: name each once",
                           {"field": "parameters"})
        from_node = self.arg("from_node", str, None, check=lambda s: 0 < len(s) <= 64, hint="a node id")
        # the request as sent (its session as named): a retry is answered even once that session was deleted, or
        # its name given to a newer one (a review: not_found, idempotency_conflict)
        key, digest = _idempotency(self, {"op": "save", "session": ref, "name": name, "description": description,
                                          "parameters": parameters, "from_node": from_node})
        replay = _stored(self, key, digest)
        if replay is not None:
            return replay
        row = resolve_session(self)
        try:
            roles = agent_roles(self.daemon)
        except ApiError:  # a role file broken since: the skill is saved without the roles it used
            roles = {}
        store = self.daemon.store

        most = self.daemon.cfg.max_message * 3 // 4  # the document is one request (import) and one reply (show)

        def made() -> dict[str, Any]:  # the session's steps and events, read on a worker (daemon/reads.py)
            doc = extract(store, row, name=name, description=description, parameters=parameters,
                          from_node=from_node, roles=roles)
            check_skill(doc)  # what is stored can be started and shown
            size = len(orjson.dumps(doc))
            if size > most:  # code and answers are capped; goals, file lists and wide characters add to them
                raise SkillError("bad_skill", f"a skill of session {row['id']} would be {size:,} bytes, more than "
                                 f"{most:,} (it must travel in one message: show, export, import): save one from a "
                                 f"later step (labd skills save {row['id']} --from NODE)", "from_node")
            return doc
        try:
            doc = yield Read(made, "skill")
        except SkillError as exc:
            raise _skill_error(exc) from None
        self.daemon.write("skill.save", (doc, key, digest), self.reply_to)
        return DEFERRED


@register
class ImportSkill(Request):
    type = "skill.import"

    def execute(self) -> Any:
        # a misspelt idempotency_key was ignored: a retry stored a second version
        self.only("document", "name", "idempotency_key", done="nothing was imported")
        doc = self.arg("document", dict, hint="a skill document (labd skills export)")
        name = self.arg("name", str, None, check=lambda n: NAME.match(n) is not None, hint=NAME_HINT)
        key, digest = _idempotency(self, {"op": "import", "document": doc, "name": name})
        replay = _stored(self, key, digest)
        if replay is not None:
            return replay
        if name is not None:
            doc = {**doc, "name": name}
        try:
            check_skill(doc)
        except SkillError as exc:
            raise ApiError("bad_request", f"not a usable skill document: {exc}", {"field": exc.field}) from None
        # Where another machine's session imported its workflow from is not kept: a directory another local user can
        # write (/tmp/x) named there would put their modules ahead of the real ones (json.py) in every run of it
        doc = {k: v for k, v in doc.items() if k != "sys_path"}
        if doc["workflow"] in PLAN_WORKFLOWS:  # its plan's roles are asked of this registry (unknown: the engineer)
            roles = agent_roles(self.daemon)
            for i, step in enumerate(doc.get("plan") or []):
                if step.get("agent") not in (None, "none") and step["agent"] not in roles:
                    raise ApiError("bad_request", f"not a usable skill document: plan[{i}].agent {step['agent']!r} "
                                   f"is no role here (known: {', '.join(sorted(roles))}; labd agents lists them)",
                                   {"field": f"plan[{i}].agent"})
        self.daemon.write("skill.save", (doc, key, digest), self.reply_to)
        return DEFERRED


@register
class ListSkills(Request):
    type = "skill.list"

    def execute(self) -> Any:  # a generator when it searches
        self.filters("search")  # `name`: every skill
        search = self.arg("search", str, None, check=lambda s: 0 < len(s) <= 200, hint="1-200 characters")
        engine = self.daemon.store.engine
        if search is None:
            return {"skills": list_skills(engine)}
        # a search parses documents (megabytes each): on a read worker, not the request loop (daemon/reads.py)
        return (yield Read(lambda: {"skills": list_skills(engine, search)}, "skill search"))


@register
class GetSkill(Request):
    type = "skill.get"

    def execute(self) -> Any:
        version = self.arg("version", int, None, check=lambda v: v > 0, hint="a version number")
        try:
            doc = get_skill(self.daemon.store.engine, _name(self), version)
            return {"skill": doc, "reuses": reuses(str(doc.get("workflow")))}
        except SkillError as exc:
            raise _skill_error(exc) from None


@register
class DeleteSkill(Request):
    type = "skill.delete"

    def execute(self) -> Any:
        self.only("name")  # a `version` deleted every version
        name = _name(self)
        try:
            get_skill(self.daemon.store.engine, name)
        except SkillError as exc:
            if exc.code != "bad_skill":  # a skill whose document is unreadable can still be deleted
                raise _skill_error(exc) from None
        self.daemon.write("skill.delete", name, self.reply_to)
        return DEFERRED
