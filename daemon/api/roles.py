"""The agent registry as the daemon's requests see it: read afresh each time (an edited role applies to the next
session without a restart), with one error for a broken registry."""

from __future__ import annotations

from typing import Any

from labd.daemon.api.base import ApiError

__all__ = ["agent_roles"]


def agent_roles(d: Any) -> dict[str, dict[str, Any]]:
    """Every role, name -> its fields: built-ins, then ``[agents.*]`` from the config, then
    ``<home>/agents/*.toml`` (:func:`labd.runner.roles.load_roles`). A role file that does not parse raises
    :class:`ApiError` ``bad_agents`` naming it; callers that can do without the registry catch that."""
    from labd.runner.roles import RoleError, load_roles

    try:
        roles = load_roles(d.cfg.agents, d.layout.home / "agents")
    except RoleError as exc:
        raise ApiError("bad_agents", str(exc)) from None
    return {name: role.to_dict() for name, role in roles.items()}
