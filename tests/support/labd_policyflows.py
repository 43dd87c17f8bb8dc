"""Workflows for the policy tests (tests/integration/test_policy.py): agents on the offline scripted model whose
LLM calls, tool calls and code runs meet the session's policy rules. No policy code in them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any


def touch_marker(name: str) -> str:
    """Write a marker file in the work directory (so a test can tell whether the tool ran)."""
    Path(name).write_text("the tool ran")
    return f"wrote {name}"


def tool_user(ctx: Any) -> str:
    """An agent scripted to call ``touch_marker`` once, then answer; returns its answer."""
    async def body() -> str:
        agent = ctx.agent("toolie", 'CALL_TOOL: touch_marker {"name": "marker.txt"}\nAnswer briefly.',
                          tools=[touch_marker])
        return (await agent.ask("please mark")).body or ""

    return asyncio.run(body())


def two_spenders(ctx: Any, calls: int = 8) -> dict[str, int]:
    """Agents ``spender`` and ``saver`` each make ``calls`` LLM calls; returns how many answers each got that
    were not policy refusals."""
    async def body() -> dict[str, int]:
        agents = {n: ctx.agent(n, "ROLE: researcher") for n in ("spender", "saver")}
        answered = dict.fromkeys(agents, 0)
        for i in range(calls):
            for name, agent in agents.items():
                reply = (await agent.ask(f"question {i}: " + "x" * 400)).body or ""
                answered[name] += not reply.startswith("POLICY DENIED")
        return answered

    return asyncio.run(body())


def models(ctx: Any) -> dict[str, str]:
    """``planner`` and ``worker`` ask the configured model ``smart``; ``helper`` the default one."""
    async def body() -> dict[str, str]:
        agents = {"planner": ctx.agent("planner", "ROLE: researcher", model="smart"),
                  "worker": ctx.agent("worker", "ROLE: researcher", model="smart"),
                  "helper": ctx.agent("helper", "ROLE: researcher")}
        return {n: (await a.ask("what is 2+2?")).body or "" for n, a in agents.items()}

    return asyncio.run(body())
