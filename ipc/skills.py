"""The SDK's skills calls (mixed into :class:`~labd.ipc.client.Client`): save a completed session as a skill, list,
read, delete, import them. Running one is ``Client.start("skill:NAME", params=...)`` (``skill:NAME@VERSION``: an
older version). Each is one request of docs/protocol.md §4.1 (``skill.*``); errors are
:class:`~labd.ipc.errors.LabdError` with the daemon's code."""

from __future__ import annotations

from typing import Any

from labd.ipc.errors import LabdError
from labd.ipc.wire import json_int

__all__ = ["Skills", "huge_number"]


def huge_number(doc: Any) -> str | None:
    """Where ``doc`` (parsed JSON) holds an integer outside 64 bits (``params.max_steps``), or None: the wire would
    carry it as a text, and the skill would change without a word."""
    todo: list[tuple[str, Any]] = [("", doc)]
    while todo:
        at, value = todo.pop()
        if isinstance(value, dict):
            todo.extend((f"{at}.{k}" if at else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((f"{at}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and not json_int(value):
            return at
    return None


class Skills:
    """Skills calls of :class:`~labd.ipc.client.Client`."""

    def request(self, type_: str, **body: Any) -> Any:  # provided by Client
        raise NotImplementedError

    def keyed_request(self, type_: str, body: dict[str, Any], key: str | None, retries: int) -> Any:  # by Client
        raise NotImplementedError

    def save_skill(self, session: str, name: str, *, parameters: list[str] | str | None = None, description: str = "",
                   from_node: str | None = None, idempotency_key: str | None = None,
                   retries: int = 1) -> dict[str, Any]:
        """Save completed session ``session`` as a new version of skill ``name``: ``{name, version}``. ``parameters``:
        params of the session each run must give (a list of names, or one name); ``from_node``: only that step and
        the ones after it.

        Carries an idempotency key (``idempotency_key``, else a fresh random one) and is retried ``retries`` times
        with it when no reply comes in time: the daemon answers a retry with the version the first attempt stored
        (``replayed: true``), so a lost reply never saves a second version."""
        if isinstance(parameters, str):  # one name ("task"): list("task") would ask for 't', 'a', 's', 'k'
            parameters = [parameters]
        body: dict[str, Any] = {"session": session, "name": name, "parameters": list(parameters or [])}
        if description:
            body["description"] = description
        if from_node is not None:
            body["from_node"] = from_node
        return self.keyed_request("skill.save", body, idempotency_key, retries)

    def skills(self, search: str | None = None) -> list[dict[str, Any]]:
        """The latest version of every skill (``search``: those whose name, description or texts contain it)."""
        return self.request("skill.list", **({"search": search} if search else {}))["skills"]  # type: ignore[no-any-return]

    def skill(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A skill's document (the latest version unless ``version``), with ``reuses`` beside it: ``{skill,
        reuses}`` (``plan``: runs reuse its plan and code; ``params``: its params only)."""
        return self.request("skill.get", name=name, **({"version": version} if version else {}))  # type: ignore[no-any-return]

    def delete_skill(self, name: str) -> dict[str, Any]:
        """Delete every version of skill ``name``: ``{name, versions}`` (their numbers are never given again)."""
        return self.request("skill.delete", name=name)  # type: ignore[no-any-return]

    def import_skill(self, document: dict[str, Any], name: str | None = None, *, idempotency_key: str | None = None,
                     retries: int = 1) -> dict[str, Any]:
        """Store a skill document (as :meth:`skill` or ``labd skills export`` gives it) as a new version, under
        ``name`` if given: ``{name, version}``. Raises :class:`~labd.ipc.errors.LabdError` ``bad_request`` for an
        integer past 64 bits (it would be stored as a text). Keyed and retried as :meth:`save_skill`."""
        if set(document) == {"skill", "reuses"} and isinstance(document["skill"], dict):
            document = document["skill"]  # as skill() gives it: the document, with what runs reuse beside it
        huge = huge_number(document)
        if huge:
            raise LabdError("bad_request", f"{huge} is a number too large to keep exactly (more than 64 bits)",
                            {"field": huge})
        return self.keyed_request("skill.import", {"document": document, **({"name": name} if name else {})},
                           idempotency_key, retries)
