"""Building ag2 agents for a session: model from configuration, tracking wired in, HITL routed to approvals.

``ctx.agent(...)`` calls :meth:`AgentFactory.agent`. The model is looked up by name in the session's
model configuration (``[models.<name>]`` in config.toml); with nothing configured, ``default`` is the
offline scripted model. API keys are read from the runner's withheld secrets by the *name* of the
environment variable in the configuration, so they never reach the environment of executed code.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labd.ipc.events import APPROVAL_PROMPT_MAX
from labd.ipc.models import PROVIDERS
from labd.ipc.policy import Policy
from labd.runner.agents.budget import Budget
from labd.runner.agents.code import CODE_TOOL, make_run_code
from labd.runner.agents.context import current_agent, current_model
from labd.runner.agents.mcp_tools import toolkits_for
from labd.runner.agents.offline import OFFLINE_MODEL, OFFLINE_PROVIDER, OfflineModelConfig
from labd.runner.agents.policy import PolicyGate
from labd.runner.agents.pricing import PriceTable
from labd.runner.agents.tracking import Tracker
from labd.runner.approvals import Approvals
from labd.runner.context import current_node
from labd.runner.files import FileTracker
from labd.runner.roles import BUILTIN, pick

__all__ = ["AgentFactory", "ModelError", "PROVIDERS"]

_PASSTHROUGH = ("base_url", "temperature", "max_tokens", "seed", "timeout", "max_retries", "streaming")


class ModelError(Exception):
    """A model name that is not configured, or a configuration that cannot be used."""


class AgentFactory:
    """Creates tracked ag2 agents for one session."""

    def __init__(self, *, emit: Callable[..., int], new_node_id: Callable[[], str], workdir: Path,
                 models: Mapping[str, Mapping[str, Any]], prices: Mapping[str, Mapping[str, float]],
                 secrets: Mapping[str, str], approvals: Approvals, files: FileTracker,
                 mcp_servers: Mapping[str, Mapping[str, Any]] | None = None,
                 roles: Mapping[str, Any] | None = None, role_overrides: Mapping[str, str] | None = None,
                 limits: Mapping[str, Any] | None = None, pause: Callable[[str], float | None] | None = None,
                 policy: Sequence[Mapping[str, Any]] | None = None,
                 check_stop: Callable[[], None] | None = None) -> None:
        self.models = dict(models)
        self.mcp_servers = dict(mcp_servers or {})
        self.roles = dict(roles or BUILTIN)
        self.role_overrides = dict(role_overrides or {})
        self.secrets = secrets
        self.approvals = approvals
        self.workdir = workdir
        self.emit = emit
        self.tracker = Tracker(emit, new_node_id, PriceTable(prices), files, describe=self.describe, secrets=secrets)
        rules = Policy.from_spec([dict(r) for r in policy or ()])
        if rules:  # no rules: no gate, no decisions recorded, nothing asked
            self.tracker.policy = PolicyGate(rules, emit, approvals, self.tracker.costs, check_stop=check_stop)
        # full outputs, as blobs
        self._run_code = make_run_code(self.tracker.emit_full, workdir, files,
                                       gate=self._code_gate if rules else None)
        self._budget_action = str((limits or {}).get("budget_action") or "stop")
        self._pause = pause
        self._check_stop = check_stop  # raises the session's Cancelled once a stop was asked for
        budget = (limits or {}).get("budget")
        if isinstance(budget, int | float) and not isinstance(budget, bool):
            self.set_budget(float(budget))

    def set_budget(self, limit: float | None) -> bool:
        """Give the session's LLM budget a new limit in USD (a session started without one gets one, with its
        ``budget_action``); None lifts it. False if there was nothing to lift."""
        budget = self.tracker.budget
        if budget is None:
            if limit is None:
                return False
            self.tracker.budget = Budget(limit, self._budget_action, self.emit, self._pause,
                                         check_stop=self._check_stop)
        else:
            budget.limit = float("inf") if limit is None else float(limit)
        return True

    async def _code_gate(self, code: str, language: str, network: bool) -> str | None:
        gate = self.tracker.policy
        assert gate is not None  # installed only with rules
        agent = current_agent.get()
        action = gate.action("code", agent, tool=CODE_TOOL, model=current_model.get(), language=language,
                             network=network)
        return await gate.check(action, current_node.get(), code=code)

    def model_config(self, name: Any) -> tuple[Any, str, str, bool]:
        """(ag2 model config, model name, provider, offline) for a configured model name, or for an ag2
        model config object passed directly (any provider ag2 supports, or ``ag2.testing.TestConfig``)."""
        if not isinstance(name, str):
            return name, _describe(name, "model", "unknown"), _describe(name, "provider", "ag2"), False
        entry = self.models.get(name)
        if entry is None:
            if name in ("default", "offline"):
                return OfflineModelConfig(), OFFLINE_MODEL, OFFLINE_PROVIDER, True
            raise ModelError(f"unknown model {name!r}; configured: {', '.join(sorted(self.models)) or 'none'} "
                             "(add [models.<name>] to config.toml)")
        provider = str(entry.get("provider", "openai"))
        if provider == "offline":
            model = str(entry.get("model", OFFLINE_MODEL))
            return OfflineModelConfig(model), model, OFFLINE_PROVIDER, True
        if provider not in PROVIDERS:
            raise ModelError(f"model {name!r}: unknown provider {provider!r} (known: offline, {', '.join(PROVIDERS)})")
        provider_model = entry.get("model")
        if not isinstance(provider_model, str) or not provider_model:
            raise ModelError(f"model {name!r}: 'model' (the provider's model name) is required")
        model = provider_model
        kwargs: dict[str, Any] = {"model": model}
        kwargs.update({k: entry[k] for k in _PASSTHROUGH if k in entry})
        key_env = entry.get("api_key_env")
        if key_env:
            key = self.secrets.get(str(key_env))
            if not key:
                raise ModelError(f"model {name!r}: environment variable {key_env} (api_key_env) is not set "
                                 "for the daemon")
            kwargs["api_key"] = key
        elif provider == "openai":
            kwargs["api_key"] = "not-needed"  # local OpenAI-compatible servers (Ollama, vLLM, llama.cpp)
        module, cls = PROVIDERS[provider]
        config = getattr(importlib.import_module(module), cls)(**kwargs)
        return config, model, provider, False

    def describe(self, config: Any) -> tuple[str, str, bool]:
        """(model, provider, offline) of an ag2 model config an agent was built with directly."""
        if isinstance(config, OfflineModelConfig):
            return config.model, OFFLINE_PROVIDER, True
        if config is None:
            return "unknown", "ag2", False
        return _describe(config, "model", "unknown"), _describe(config, "provider", "ag2"), False

    def tracker_for(self, agent: Any) -> Any:
        """Tracking middleware for an agent built without ``ctx.agent`` (see hooks.track_all_agents)."""
        return self.tracker.tracker_for(agent)

    def agent(self, name: str, system_prompt: str | Iterable[str] = (), *, model: Any = "default",
              tools: Iterable[Any] = (), code_execution: bool = False, mcp: Iterable[str] = (),
              **kwargs: Any) -> Any:
        """A tracked ``ag2.Agent``; ``code_execution`` adds the ``run_code`` tool, ``mcp`` the tools of the
        named configured MCP servers (``[mcp.servers.<name>]``)."""
        from ag2 import Agent

        config, model_name, provider, offline = self.model_config(model)
        all_tools = [*tools, *toolkits_for(mcp, self.mcp_servers, str(self.workdir))]
        if code_execution:
            from ag2 import tool

            all_tools.append(tool(self._run_code, name=CODE_TOOL))
        middleware = [self.tracker.middleware(name, model_name, provider, offline), *kwargs.pop("middleware", [])]
        observers = list(kwargs.pop("observers", []))
        prompt = [system_prompt] if isinstance(system_prompt, str) else list(system_prompt)
        return Agent(name, prompt, config=config, tools=all_tools, middleware=middleware, observers=observers,
                     hitl_hook=kwargs.pop("hitl_hook", self._human_input_hook(name)), **kwargs)

    def role(self, wanted: str, *, name: str | None = None, model: Any = "default", **kwargs: Any) -> Any:
        """A tracked agent for the registry role ``wanted`` (after the session's ``--agent`` overrides).

        The role's own model, if it names one, wins over ``model`` (the workflow's default); ``name`` is the
        agent's name in the record (default: the role asked for, so the DAG reads the same whatever replaced it)."""
        role = pick(self.roles, self.role_overrides, wanted)
        return self.agent(name or wanted, role.system_prompt, model=role.model or model,
                          code_execution=role.code_execution or kwargs.pop("code_execution", False),
                          mcp=[*role.mcp, *kwargs.pop("mcp", [])], **kwargs)

    def _human_input_hook(self, agent: str) -> Callable[..., Any]:
        async def hook(request: Any) -> str:
            # An agent asking a human becomes a durable approval of kind "human_input"; the answer is
            # the resolver's feedback (or the decision word when none was given).
            node = current_node.get()
            timeout = getattr(request, "timeout", None)
            decision = await asyncio.to_thread(
                self.approvals.request, "human_input", fit_prompt(str(getattr(request, "content", ""))),
                options=("approve", "reject", "modify"), node_id=node, agent=agent,
                timeout=float(timeout) if timeout else None)
            return decision.feedback or decision.decision
        return hook


def fit_prompt(text: str, limit: int = APPROVAL_PROMPT_MAX) -> str:
    """An agent's message as a human-input prompt within the approval bound: a longer one keeps its start and its
    end (where the question usually is) around a note of what was left out (the whole message is in the record,
    the agent's ``agent.message``)."""
    if len(text) <= limit:
        return text
    keep = limit - 200  # room for the note
    note = f"\n\n[… {len(text) - keep:,} characters left out: the whole message is in the session's record …]\n\n"
    return text[:keep // 2] + note + text[len(text) - (keep - keep // 2):]


def _describe(config: Any, attr: str, default: str) -> str:
    try:
        value = getattr(config, attr)
    except (NotImplementedError, AttributeError):  # e.g. a TestConfig without model/provider
        return default
    return str(getattr(value, "value", value) or default)
