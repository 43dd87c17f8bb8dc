"""The offline scripted model: deterministic, network-free answers for every built-in agent role.

It makes every workflow runnable and testable without a provider. It is always labelled: model name
``labd-offline``, provider ``offline``, and every LLM event carries ``offline: true``. Behaviour is
chosen from the ``ROLE: <name>`` line the built-in prompts carry (any other agent gets a short echo):

- planner: a JSON plan ``{"steps": [{"agent", "goal", "depends_on"}]}``; feedback or a hypothesis in the
  request becomes an extra step goal, so it visibly reaches the plan;
- plan_reviewer: ``APPROVED``;
- engineer: first a ``run_code`` tool call writing ``step_<n>.json``, then ``DONE: ...`` or
  ``ERROR: ...`` from the exit code. A goal containing ``FAIL_ONCE`` fails on the first attempt only;
  ``FAIL_UNTIL_HYPOTHESIS`` fails until the request carries a hypothesis; ``FAIL_ALWAYS`` always fails;
- researcher / writer: deterministic prose (the writer's report names its inputs);
- any agent: a ``CALL_TOOL: <name> <json arguments>`` line in its system prompt or request makes it call
  that tool (when it has it) before answering, so tool use and ag2 handoff tools are scriptable too.

Token usage is counted as characters / 4, so costs are deterministic too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ag2.config import LLMClient
from ag2.events import (
    BaseEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallEvent,
    ToolCallsEvent,
    ToolResultEvent,
    ToolResultsEvent,
    Usage,
)

__all__ = ["OfflineModelConfig", "OFFLINE_MODEL", "OFFLINE_PROVIDER"]

OFFLINE_MODEL = "labd-offline"
OFFLINE_PROVIDER = "offline"
_ROLE = re.compile(r"ROLE:\s*([a-z_]+)")
_CALL_TOOL = re.compile(r"^CALL_TOOL:\s*(\S+)\s*(\{.*\})?\s*$", re.M)


def _text_of(event: BaseEvent) -> str:
    if isinstance(event, ModelRequest):
        return "\n".join(str(getattr(p, "content", "")) for p in event.parts)
    if isinstance(event, ToolResultsEvent):
        return "\n".join(_text_of(r) for r in event.results)
    if isinstance(event, ToolResultEvent):
        return "\n".join(str(getattr(p, "content", "")) for p in event.result.parts)
    if isinstance(event, ModelResponse):
        return event.content or ""
    return str(getattr(event, "content", "") or "")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OfflineClient(LLMClient):
    """An ag2 LLM client that answers from rules, never from the network."""

    def __init__(self, model: str) -> None:
        self.model = model

    async def __call__(self, messages: Sequence[BaseEvent], context: Any, *, tools: Iterable[Any] = (),
                       response_schema: Any = None, serializer: Any = None) -> ModelResponse:
        system = "\n".join(getattr(context, "prompt", []) or [])
        role_match = _ROLE.search(system)
        role = role_match.group(1) if role_match else "assistant"
        last_request = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], ModelRequest)),
                            None)
        request = _text_of(messages[last_request]) if last_request is not None else ""
        after = messages[last_request + 1:] if last_request is not None else []
        tool_output = "\n".join(_text_of(e) for e in after if isinstance(e, (ToolResultsEvent, ToolResultEvent)))  # noqa: UP038 - ag2 event types are not unionable
        prompt_text = system + "".join(_text_of(m) for m in messages)
        tool_names = {getattr(t, "name", None) or (t.get("name") if isinstance(t, dict) else None)
                      for t in _tool_schemas(tools)}
        if not tool_output:
            for m in _CALL_TOOL.finditer(system + "\n" + request):
                if m.group(1) in tool_names:
                    args = m.group(2) or "{}"
                    call = ToolCallEvent(m.group(1), arguments=args)
                    return ModelResponse(tool_calls=ToolCallsEvent([call]), usage=self._usage(prompt_text, args),
                                         model=self.model, provider=OFFLINE_PROVIDER, finish_reason="tool_calls")
        if role == "engineer" and not tool_output and "run_code" in tool_names:
            code = _engineer_code(request)
            call = ToolCallEvent("run_code", arguments=json.dumps({"code": code, "language": "python"}))
            return ModelResponse(tool_calls=ToolCallsEvent([call]), usage=self._usage(prompt_text, code),
                                 model=self.model, provider=OFFLINE_PROVIDER, finish_reason="tool_calls")
        content = _answer(role, request, tool_output)
        message = ModelMessage(content)
        await context.send(message)
        return ModelResponse(message, usage=self._usage(prompt_text, content), model=self.model,
                             provider=OFFLINE_PROVIDER, finish_reason="stop")

    @staticmethod
    def _usage(prompt: str, completion: str) -> Usage:
        p, c = _tokens(prompt), _tokens(completion)
        return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def _tool_schemas(tools: Iterable[Any]) -> list[Any]:
    out = []
    for t in tools or ():
        fn = getattr(t, "function", None)
        out.append(fn if fn is not None else t)
    return out


def _step_number(request: str) -> int:
    m = re.search(r"[Ss]tep (\d+)", request)
    return int(m.group(1)) if m else int(hashlib.sha256(request.encode()).hexdigest()[:4], 16) % 90 + 10


def _engineer_code(request: str) -> str:
    n = _step_number(request)
    failing = ("FAIL_ONCE" in request and "Previous attempt failed" not in request) or (
        "FAIL_UNTIL_HYPOTHESIS" in request and "Hypothesis:" not in request) or "FAIL_ALWAYS" in request
    if failing:
        return f"raise RuntimeError('simulated failure in step {n}')\n"
    return (
        "import json, pathlib\n"
        f"result = {{'step': {n}, 'value': sum(i * i for i in range({n * 1000}))}}\n"
        f"pathlib.Path('step_{n}.json').write_text(json.dumps(result))\n"
        f"print('wrote step_{n}.json', result['value'])\n"
    )


def _answer(role: str, request: str, tool_output: str) -> str:
    if role == "planner":
        goals = re.findall(r"^- (.+)$", request, re.M) or ["explore the data", "compute the result",
                                                            "summarise the findings"]
        m = re.search(r"at most (\d+) steps", request)
        goals = goals[: int(m.group(1))] if m else goals
        for label in ("Feedback", "Hypothesis"):
            extra = re.search(rf"^{label}: (.+)$", request, re.M)
            if extra:
                goals.append(f"address {label.lower()}: {extra.group(1)}")
        agents = ["engineer" if i % 2 == 0 or "compute" in g else "researcher" for i, g in enumerate(goals)]
        steps = [{"agent": a, "goal": g, "depends_on": [] if "independent" in request else ([i] if i else [])}
                 for i, (a, g) in enumerate(zip(agents, goals, strict=True))]
        return json.dumps({"steps": steps})
    if role == "plan_reviewer":
        return "APPROVED"
    if role == "engineer":
        if not tool_output:
            return "DONE: nothing to run"
        m = re.search(r"\[exit code: (\d+)\]", tool_output)
        if m:
            # the real error: the last lines of the traceback, ending with the exception
            tail = [line for line in tool_output.strip().splitlines() if not line.startswith("[exit code")][-3:]
            return f"ERROR: the code exited with code {m.group(1)}: " + " | ".join(t.strip() for t in tail)[-400:]
        return f"DONE: {tool_output.strip()[:200]}"
    if role == "researcher":
        digest = hashlib.sha256(request.encode()).hexdigest()[:8]
        return f"Findings ({digest}): three sources agree on the question '{request.strip()[:80]}'."
    if role == "writer":
        return "# Report\n\n" + "\n".join(f"- {line.strip()[:120]}" for line in request.splitlines() if line.strip())
    return f"OK: {request.strip()[:200]}"


class OfflineModelConfig:
    """An ag2 ModelConfig for the offline scripted model."""

    def __init__(self, model: str = OFFLINE_MODEL) -> None:
        self._model = model

    @property
    def provider(self) -> str:
        return OFFLINE_PROVIDER

    @property
    def model(self) -> str:
        return self._model

    def copy(self) -> OfflineModelConfig:
        return OfflineModelConfig(self._model)

    def create(self) -> OfflineClient:
        return OfflineClient(self._model)

    def create_files_client(self) -> Any:
        raise NotImplementedError("the offline model has no Files API")
