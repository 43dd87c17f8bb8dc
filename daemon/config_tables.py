"""The checks of the config file's tables other than ``[daemon]``'s own settings and ``[sandbox]``: ``[models]``,
``[prices]``, ``[mcp]``, ``[agents]``, ``[[policy]]``, ``[telemetry]``, ``[launcher]``, and the size settings. Each
raises :class:`ConfigError` naming the file and the setting. :func:`labd.daemon.config.load_config` calls them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labd.ipc.models import PROVIDER_NAMES
from labd.ipc.units import UnitError, parse_output_cap, parse_size

__all__ = ["ConfigError", "LAUNCHER_KEYS", "check_agents", "check_launcher", "check_mcp", "check_models",
           "check_policy", "check_prices", "check_telemetry", "max_output_setting", "size_setting"]


class ConfigError(Exception):
    """Configuration that cannot be used; the CLI turns it into a message and exit code 2."""


def check_models(path: Path, models: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise ConfigError(f"{path}: [models.<name>] entries must be tables")
    for name, entry in models.items():
        if "api_key" in entry:
            raise ConfigError(f"{path}: model {name!r}: put the key in an environment variable and name it with "
                              "api_key_env; keys are never stored in configuration")
        provider = entry.get("provider", "openai")
        if not isinstance(provider, str):
            raise ConfigError(f"{path}: model {name!r}: provider must be a string")
        if provider not in PROVIDER_NAMES:  # every session using it failed at its first LLM call
            raise ConfigError(f"{path}: model {name!r}: unknown provider {provider!r} (known: "
                              f"{', '.join(PROVIDER_NAMES)})")
    return models


def check_prices(path: Path, prices: Any) -> dict[str, dict[str, float]]:
    ok = isinstance(prices, dict) and all(
        isinstance(p, dict) and set(p) <= {"input", "output"} and all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in p.values())
        for p in prices.values())
    if not ok:
        raise ConfigError(f'{path}: [prices."<model>"] entries take input and output, USD per million tokens')
    return prices


def check_mcp(path: Path, section: Any) -> dict[str, dict[str, Any]]:
    """``[mcp.servers.<name>]``: ``command`` (+ ``args``, ``env``, ``cwd``) for stdio, or ``url``."""
    if not isinstance(section, dict) or set(section) - {"servers"}:
        raise ConfigError(f"{path}: [mcp] takes only [mcp.servers.<name>] tables")
    servers = section.get("servers", {})
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        raise ConfigError(f"{path}: [mcp.servers.<name>] entries must be tables")
    for name, entry in servers.items():
        unknown = set(entry) - {"command", "args", "env", "cwd", "url"}
        if unknown:
            raise ConfigError(f"{path}: MCP server {name!r}: unknown keys {sorted(unknown)}")
        if bool(entry.get("command")) == bool(entry.get("url")):
            raise ConfigError(f"{path}: MCP server {name!r}: give either command (stdio) or url (HTTP)")
        if not isinstance(entry.get("args", []), list) or not all(isinstance(a, str) for a in entry.get("args", [])):
            raise ConfigError(f"{path}: MCP server {name!r}: args must be a list of strings")
        env = entry.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ConfigError(f"{path}: MCP server {name!r}: env must be a table of strings")
    return servers


def check_agents(path: Path, section: Any) -> dict[str, dict[str, Any]]:
    """``[agents.<name>]`` tables: checked now (a bad role stops the daemon at start), used per session."""
    from labd.runner.roles import RoleError, load_roles

    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [agents.<name>] entries must be tables")
    try:
        load_roles(section, None)
    except RoleError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return section


def check_policy(path: Path, tables: Any) -> list[dict[str, Any]]:
    """``[[policy]]`` tables: validated now, so a daemon with a bad rule refuses to start."""
    from labd.ipc.policy import PolicyError
    from labd.ipc.policy_rules import parse_rules

    try:
        parse_rules(tables, str(path))
    except PolicyError as exc:
        raise ConfigError(exc.message) from None
    return list(tables)


def check_telemetry(path: Path, section: Any) -> dict[str, Any]:
    """``[telemetry]``: otlp_endpoint (http/https URL), service_name, interval (s), headers_env."""
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [telemetry] must be a table")
    unknown = set(section) - {"otlp_endpoint", "service_name", "interval", "headers_env"}
    if unknown:
        raise ConfigError(f"{path}: unknown [telemetry] settings {sorted(unknown)}")
    endpoint = section.get("otlp_endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
        raise ConfigError(f"{path}: [telemetry] otlp_endpoint must be an http(s) URL, not {endpoint!r}")
    if endpoint is not None:
        from labd.daemon.otel_http import parse_endpoint

        try:  # all of it, here: `serve --check` said OK to a port of "43l8", and the daemon then failed to start
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigError(f"{path}: [telemetry] otlp_endpoint: {exc}") from None
    interval = section.get("interval", 2.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0.05 <= interval <= 3600:
        raise ConfigError(f"{path}: [telemetry] interval must be between 0.05 and 3600 seconds")
    headers = section.get("headers_env", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ConfigError(f"{path}: [telemetry] headers_env maps header names to environment variable NAMES")
    return section


def size_setting(name: str, value: Any, what: str, least: int = 1) -> int:
    """A size setting: a string with a unit ("16G", parsed as ``labd run --memory`` is) or whole bytes, at least
    ``least``; else ConfigError naming the setting (``what``: what it must be)."""
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except UnitError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be {what}, not {value!r}")
    return value


def max_output_setting(value: Any) -> int | None:
    """``max_output``: a size with a unit, or "none" (also false/0) for sessions without an output cap."""
    try:
        return parse_output_cap(None if value is False or value == 0 else value)
    except UnitError as exc:
        raise ConfigError(f"max_output: {exc}") from None


LAUNCHER_KEYS = {"kind": str, "address": str, "runner_listen": str, "advertise": str, "node_dir": str,
                 "ship_max_bytes": int}


def check_launcher(path: Path, section: Any) -> dict[str, Any]:
    """``[launcher]``: which launcher runs sessions by default, and where the Ray cluster is."""
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [launcher] must be a table")
    for key, value in section.items():
        kind = LAUNCHER_KEYS.get(key)
        if kind is None:
            raise ConfigError(f"{path}: unknown [launcher] setting {key!r} (known: {sorted(LAUNCHER_KEYS)})")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{path}: [launcher] {key} must be a {kind.__name__}")
    if section.get("kind", "template") not in ("template", "ray"):
        raise ConfigError(f"{path}: [launcher] kind must be \"template\" or \"ray\", not {section['kind']!r}")
    listen = section.get("runner_listen")
    if listen is not None and not (listen.startswith("tcp://") and listen.rpartition(":")[2].isdigit()):
        raise ConfigError(f"{path}: [launcher] runner_listen must be tcp://HOST:PORT (port 0: any free port)")
    return dict(section)


