"""``deep_research``: literature review -> planning -> control -> synthesis, with concurrency.

A larger sample that proves a workflow needs no tracking code: it only structures phases and steps
and talks to agents. Literature questions are reviewed concurrently; plan steps whose dependencies
are met run concurrently, in waves; the synthesis writes ``report.md``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from labd.runner.context import Context
from labd.runner.workflows.planning import make_plan, run_step

__all__ = ["deep_research"]

DEFAULT_QUESTION = "How does the sum of squares grow, and how well does the closed formula match it?"


def deep_research(ctx: Context, question: str = DEFAULT_QUESTION, subquestions: int = 3, max_steps: int = 4,
                  max_retries: int = 1, model: str = "default") -> dict[str, Any]:
    """Review literature (concurrently), plan, execute independent steps concurrently, synthesise a report."""

    async def review(i: int) -> str:
        # results go through node.result: a resumed or branched session skips a completed step's body
        # and restores its result (labd.runner.durable)
        with ctx.step(f"review {i}", depends_on=[]) as node:
            researcher = ctx.role("researcher", name=f"researcher_{i}", model=model)
            node.result = (await researcher.ask(f"Literature question {i} about: {question}")).body or ""
        return str(node.result)

    async def execute(plan: Any) -> list[str]:
        done: dict[int, str] = {}
        results: dict[int, str] = {}
        pending = list(enumerate(plan.steps))

        async def one(i: int, st: Any) -> None:
            with ctx.step(f"step {i + 1}: {st.goal[:60]}", depends_on=[done[d] for d in st.depends_on]) as node:
                node.result = await run_step(ctx, i + 1, len(plan.steps), st, model, max_retries)
            results[i] = node.result
            done[i] = node.id

        while pending:
            wave = [(i, st) for i, st in pending if all(d in done for d in st.depends_on)]
            await asyncio.gather(*(one(i, st) for i, st in wave))
            pending = [p for p in pending if p not in wave]
        return [results[i] for i in sorted(results)]

    async def body() -> dict[str, Any]:
        with ctx.step("literature review", kind="phase") as phase:
            phase.result = await asyncio.gather(*(review(i) for i in range(1, subquestions + 1)))
        notes = phase.result
        with ctx.step("planning", kind="phase") as phase:
            phase.result = await make_plan(ctx, f"{question}\nThe steps are independent.", max_steps, model)
        plan = phase.result
        with ctx.step("control", kind="phase") as phase:
            phase.result = await execute(plan)
        results = phase.result
        with ctx.step("synthesis", kind="phase"):
            writer = ctx.role("writer", model=model)
            report = (await writer.ask("\n".join([f"Question: {question}", *notes, *results]))).body or ""
            (ctx.workdir / "report.md").write_text(report)
        return {"notes": notes, "results": results, "report": "report.md"}

    return ctx.run(body())
