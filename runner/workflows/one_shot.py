"""``one_shot``: one engineer agent with code execution solves one task (no tracking code)."""

from __future__ import annotations

from labd.runner.context import Context
from labd.runner.workflows.planning import PlanStep, run_step

__all__ = ["one_shot"]


def one_shot(ctx: Context, task: str = "Compute the first 20 Fibonacci numbers and save them to fib.json",
             max_retries: int = 1, model: str = "default") -> str:
    """An engineer writes and runs code for ``task``, retrying with the error fed back."""
    async def body() -> str:
        with ctx.step("solve"):
            return await run_step(ctx, 1, 1, PlanStep("engineer", task), model, max_retries)

    return ctx.run(body())
