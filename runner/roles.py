"""The agent registry: named roles (system prompt, model, code execution, MCP servers) that workflows ask for.

Built-in workflows ask for roles by name (``ctx.role("engineer")``) instead of hard-coding prompts, so a user can
change the engineer of every workflow, or of one session, without editing code:

- built-in roles (:data:`BUILTIN`: planner, plan_reviewer, engineer, researcher, writer);
- ``[agents.<name>]`` tables in config.toml, and ``<home>/agents/<name>.toml`` files (read at each session
  start, so an edit applies to the next session) — a role of a built-in's name replaces it everywhere;
- per session, ``labd run ... --agent engineer=my_engineer`` (``session.start`` field ``agents``) makes the
  workflow's requests for ``engineer`` use the role ``my_engineer``.

A role may ``extends`` another and change only some fields. Everything here is plain data: the daemon validates
and ships roles to the runner in the start spec; the runner builds agents from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from labd.ipc.safe_files import read_regular
from labd.ipc.tomlfile import TomlFileError, read_toml
from labd.runner.workflows import prompts

__all__ = ["BUILTIN", "Role", "RoleError", "load_roles", "parse_role", "pick", "MAX_ROLE_FILE"]

KEYS = {"system_prompt", "system_prompt_file", "model", "code_execution", "mcp", "description", "extends"}
#: bytes of a registry file or a system_prompt_file read at most (the daemon reads them at every session start): a
#: larger file, or one that is not a regular file, is a RoleError naming it
MAX_ROLE_FILE = 1 << 20


class RoleError(ValueError):
    """A role definition that cannot be used, or a name that is not defined."""


@dataclass(frozen=True)
class Role:
    """One agent role."""

    name: str
    system_prompt: str
    model: str | None = None  # None: the model the workflow asks for
    code_execution: bool = False
    mcp: tuple[str, ...] = ()
    description: str = ""
    source: str = "built-in"
    extends: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mcp"] = list(self.mcp)
        return out


BUILTIN: dict[str, Role] = {r.name: r for r in (
    Role("planner", prompts.PLANNER, description="turns a task into a JSON plan of steps"),
    Role("plan_reviewer", prompts.PLAN_REVIEWER, description="approves a plan or lists what to fix"),
    Role("engineer", prompts.ENGINEER, code_execution=True, description="writes and runs Python (run_code)"),
    Role("researcher", prompts.RESEARCHER, description="answers a step's question"),
    Role("writer", prompts.WRITER, description="writes the final Markdown report"),
)}


def parse_role(name: str, data: Any, source: str, known: dict[str, Role], base_dir: Path | None = None) -> Role:
    """A role from a config table or registry file; ``known`` holds the roles it may extend."""
    if not isinstance(data, dict):
        raise RoleError(f"{source}: agent {name!r} must be a table")
    unknown = set(data) - KEYS
    if unknown:
        raise RoleError(f"{source}: agent {name!r}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(KEYS))})")
    base_name = data.get("extends") or (name if name in known else None)
    if base_name is not None and base_name not in known:
        raise RoleError(f"{source}: agent {name!r} extends unknown role {base_name!r}")
    prompt = data.get("system_prompt")
    if data.get("system_prompt_file"):
        path = Path(str(data["system_prompt_file"])).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            prompt = read_regular(path, MAX_ROLE_FILE).decode()
        except OSError as exc:
            raise RoleError(f"{source}: agent {name!r}: cannot read system_prompt_file {path}: {exc}") from None
        except UnicodeDecodeError:
            raise RoleError(f"{source}: agent {name!r}: system_prompt_file {path} is not UTF-8 text") from None
    if prompt is None and base_name is None:
        raise RoleError(f"{source}: agent {name!r} needs system_prompt (or system_prompt_file, or extends)")
    for key, kind in (("system_prompt", str), ("model", str), ("description", str), ("code_execution", bool)):
        if key in data and not isinstance(data[key], kind):
            raise RoleError(f"{source}: agent {name!r}: {key} must be a {kind.__name__}")
    mcp = data.get("mcp", [])
    if not isinstance(mcp, list) or not all(isinstance(m, str) for m in mcp):
        raise RoleError(f"{source}: agent {name!r}: mcp must be a list of MCP server names")
    base = known[base_name] if base_name is not None else Role(name, "")
    return replace(base, name=name, system_prompt=prompt if prompt is not None else base.system_prompt,
                   model=data.get("model", base.model), code_execution=data.get("code_execution", base.code_execution),
                   mcp=tuple(mcp) if "mcp" in data else base.mcp, description=data.get("description", base.description),
                   source=source, extends=base_name if base_name != name else base.extends)


def load_roles(config_tables: dict[str, Any], agents_dir: Path | None) -> dict[str, Role]:
    """Built-ins, then ``[agents.*]`` from config, then ``<home>/agents/*.toml`` (later wins)."""
    roles = dict(BUILTIN)
    for name, data in sorted(config_tables.items()):
        roles[name] = parse_role(name, data, "config.toml [agents]", roles)
    if agents_dir is not None and agents_dir.is_dir():
        for path in sorted(agents_dir.glob("*.toml")):
            try:
                data = read_toml(path, MAX_ROLE_FILE)
            except TomlFileError as exc:
                raise RoleError(f"cannot read {path}: {exc}") from None
            roles[path.stem] = parse_role(path.stem, data, str(path), roles, base_dir=path.parent)
    return roles


def pick(roles: dict[str, Any], overrides: dict[str, str], wanted: str) -> Role:
    """The role a workflow's request for ``wanted`` gets in this session (after ``--agent`` overrides)."""
    name = overrides.get(wanted, wanted)
    data = roles.get(name)
    if data is None:
        raise RoleError(f"unknown agent role {name!r}" + (f" (for {wanted!r})" if name != wanted else "")
                        + f"; known: {', '.join(sorted(roles))}")
    if isinstance(data, Role):
        return data
    return Role(**{**data, "mcp": tuple(data.get("mcp") or ())})
