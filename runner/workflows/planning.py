"""``planning_and_control`` and ``hitl``: plan with a reviewed planner, then execute step by step.

Planning: a planner agent proposes a JSON plan (steps, each with an agent and a goal), a reviewer
approves it or sends it back once. Control: each step runs its agent (engineers execute code) with
up to ``max_retries`` retries that feed the error back. ``hitl`` adds approval checkpoints after
planning, before each step and on error, with bounded redos that become branch nodes in the DAG.
There is no tracking code here: agents, LLM calls, tools, files and costs are recorded by the runner.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from labd.runner.approvals import Decision
from labd.runner.context import Context

__all__ = ["planning_and_control", "hitl", "Plan", "PlanStep", "StepFailed", "make_plan", "run_step"]

DEFAULT_TASK = ("Estimate the sum of squares below 10,000 three ways and compare them.\n"
                "- compute the sum directly\n- compute it with the closed formula\n- compare both results")


class StepFailed(Exception):
    """A step's agent reported failure after all retries."""


class PlanRejected(Exception):
    """The human rejected the plan more often than allowed."""


@dataclass
class PlanStep:
    agent: str
    goal: str
    depends_on: list[int] = field(default_factory=list)


@dataclass
class Plan:
    steps: list[PlanStep]

    def to_json(self) -> str:
        return json.dumps({"steps": [asdict(s) for s in self.steps]})


def parse_plan(text: str, max_steps: int) -> Plan:
    """The plan in a planner's reply (the first JSON object in it)."""
    m = re.search(r"\{.*\}", text or "", re.S)
    try:
        data = json.loads(m.group(0)) if m else None
        raw = data["steps"] if isinstance(data, dict) else None
        steps = [PlanStep(agent=str(s.get("agent", "engineer")), goal=str(s["goal"]),
                          depends_on=[int(d) for d in s.get("depends_on", []) if isinstance(d, int)])
                 for s in raw or []]
    except (ValueError, KeyError, TypeError, AttributeError):
        steps = []
    if not steps:
        raise StepFailed(f"the planner did not produce a usable plan: {text[:300]!r}")
    return Plan([PlanStep(s.agent if s.agent in ("engineer", "researcher") else "engineer", s.goal,
                          [d for d in s.depends_on if 0 <= d < i]) for i, s in enumerate(steps[:max_steps])])


async def make_plan(ctx: Context, task: str, max_steps: int, model: str, *, feedback: str | None = None,
                    hypothesis: str | None = None) -> Plan:
    """Planner proposes, reviewer approves or sends it back once."""
    planner = ctx.role("planner", model=model)
    reviewer = ctx.role("plan_reviewer", model=model)
    request = f"Task: {task}\nMake a plan with at most {max_steps} steps."
    if feedback:
        request += f"\nFeedback: {feedback}"
    if hypothesis:
        request += f"\nHypothesis: {hypothesis}"
    plan = parse_plan((await planner.ask(request)).body or "", max_steps)
    review = (await reviewer.ask(f"Task: {task}\nPlan: {plan.to_json()}")).body or ""
    if not review.strip().upper().startswith("APPROVED"):
        plan = parse_plan((await planner.ask(f"{request}\nFeedback: {review}")).body or "", max_steps)
    return plan


async def run_step(ctx: Context, index: int, total: int, step: PlanStep, model: str, max_retries: int, *,
                   instructions: str | None = None, hypothesis: str | None = None, task: str | None = None) -> str:
    """Run one plan step with its agent, retrying with the error fed back; raises StepFailed. ``task``: the task
    the step is for, when the plan was made for another one (a skill's)."""
    agent = ctx.role(step.agent, model=model)
    # each attempt is its own node (attempt n, a retry edge from the failed one, its real error)
    previous = None
    tries = max_retries + 1
    for attempt in range(1, tries + 1):
        msg = f"Step {index} of {total}: {step.goal}"
        if task:
            msg = f"Task: {task}\n{msg}"
        if instructions:
            msg += f"\nInstructions: {instructions}"
        if hypothesis:
            msg += f"\nHypothesis: {hypothesis}"
        if previous is not None:
            msg += f"\nPrevious attempt failed: {previous.error}"
            ctx.retrying(f"step {index}", previous, attempt, tries)
        with ctx.step(f"step {index} attempt {attempt}", kind="attempt", attempt=attempt,
                      retry_of=previous.id if previous else None) as node:
            node.result = (await agent.ask(msg)).body or ""
            if node.result.startswith("ERROR"):
                node.fail(node.result)
        if node.error is None:
            return str(node.result)
        previous = node
    raise StepFailed(previous.error if previous and previous.error else "step failed")


def given_plan(plan: list[Any]) -> Plan:
    """A plan given as a parameter (a skill's ``{agent, goal, depends_on}`` steps), read as a planner's would be."""
    return parse_plan(json.dumps({"steps": plan}), len(plan))


def step_hint(hints: list[Any] | None, index: int) -> str | None:
    """The hint given for step ``index`` (1-based) of a given plan, if any."""
    return str(hints[index - 1]) if hints and index - 1 < len(hints) and hints[index - 1] else None


def planning_and_control(ctx: Context, task: str = DEFAULT_TASK, max_steps: int = 3, max_retries: int = 2,
                         model: str = "default", plan: list[Any] | None = None,
                         hints: list[Any] | None = None) -> dict[str, Any]:
    """Plan the task (planner + reviewer), then execute the steps in order with per-step retries.

    ``plan`` (a list of ``{agent, goal, depends_on}``, e.g. from a skill) skips planning; ``hints`` (one text per
    step, e.g. the code that worked before) are given to each step's agent as instructions."""

    async def body() -> dict[str, Any]:
        # results go through node.result: a resumed or branched session skips a completed step's body and
        # restores its result (labd.runner.durable)
        with ctx.step("planning", kind="phase") as phase:
            phase.result = given_plan(plan) if plan else \
                await make_plan(ctx, task, max_steps, model)
        the_plan = phase.result
        results = []
        with ctx.step("control", kind="phase"):
            names = [f"step {i}: {st.goal[:60]}" for i, st in enumerate(the_plan.steps, 1)]
            planned = ctx.plan(names)  # in the DAG as "planned" until each runs
            for i, st in enumerate(the_plan.steps, 1):
                hint = step_hint(hints, i)
                with ctx.step(names[i - 1], planned=planned[i - 1]) as node:
                    # a given plan (a skill's) was made for the task it was saved from: each step is told this one
                    node.result = await run_step(ctx, i, len(the_plan.steps), st, model, max_retries,
                                                 instructions=hint, task=task if plan else None)
                results.append(node.result)
        return {"plan": json.loads(the_plan.to_json())["steps"], "results": results}

    return ctx.run(body())


def hitl(ctx: Context, task: str = DEFAULT_TASK, max_steps: int = 3, max_retries: int = 1, max_redos: int = 2,
         approval_timeout: float = 0.0, timeout_policy: Literal["approve", "reject", "fail"] = "reject",
         model: str = "default", plan: list[Any] | None = None, hints: list[Any] | None = None) -> dict[str, Any]:
    """planning_and_control with a human in the loop: approve / reject / modify / redo after planning,
    before each step and on error. Redos (at most ``max_redos`` per checkpoint) become branch nodes.
    ``approval_timeout`` > 0 applies ``timeout_policy`` to a request unanswered that long: approve it, reject it,
    or fail the session. ``plan`` (e.g. a skill's) is the first plan put to the human, instead of the planner's (a
    rejected or redone one is planned again); ``hints`` (one text per step of it) go to each step's agent."""
    timeout = approval_timeout if approval_timeout > 0 else None

    async def ask(kind: str, prompt: str, options: list[str], context: Any = None) -> Decision:
        return await asyncio.to_thread(ctx.approval, kind, prompt, options=options, context=context,
                                       timeout=timeout, policy=timeout_policy)

    async def body() -> dict[str, Any]:
        feedback = hypothesis = guidance = None
        redos = rejections = 0
        previous: str | None = None
        while True:
            label = "planning" if previous is None else f"planning (attempt {redos + rejections + 1})"
            from_given = bool(plan) and previous is None  # a plan made again after a rejection or redo is new
            # the plan and its answer go through node.result: a resumed or branched session skips a completed
            # step's body and restores its result (local variables set in it would not exist)
            with ctx.step(label, kind="phase", redo_of=previous) as node:
                made = given_plan(plan) if from_given and plan else \
                    await make_plan(ctx, task, max_steps, model, feedback=feedback, hypothesis=hypothesis)
                options = ["approve", "reject", "modify"] + (["redo"] if redos < max_redos else [])
                node.result = (made, await ask("after_planning", f"Approve this plan for: {task}", options,
                                               {"plan": json.loads(made.to_json())["steps"]}))
            the_plan, decision = node.result
            previous = node.id
            if decision.decision == "approve":
                break
            if decision.decision == "modify":
                guidance = decision.feedback
                break
            if decision.decision == "reject":
                rejections += 1
                if rejections > max_redos:
                    raise PlanRejected(f"plan rejected {rejections} times: {decision.feedback or 'no feedback'}")
                feedback = decision.feedback or "the plan was rejected"
            else:
                redos += 1
                hypothesis = decision.hypothesis or decision.feedback
        results: list[str] = []
        # the given plan's hints fit its steps only (from_given: the plan accepted is the given one)
        with ctx.step("control", kind="phase"):
            for i, st in enumerate(the_plan.steps, 1):
                name = f"step {i}: {st.goal[:60]}"
                # the answer is a node's result: a resume or a branch past this point restores it, and does not ask
                # a human again about a step it restores (or one it reruns from here, as a branch of that step)
                with ctx.step(f"review {name}", kind="phase") as review:
                    review.result = await ask("before_step", f"Run {name}?", ["approve", "reject", "modify"],
                                              asdict(st))
                before = review.result
                if before.decision == "reject":
                    ctx.skip(name, before.feedback or "rejected by a human")
                    continue
                hint = step_hint(hints, i) if from_given else None
                instructions = "\n".join(str(x) for x in (guidance, before.feedback, hint) if x) or None
                results.append(await _run_with_redos(ctx, ask, i, len(the_plan.steps), st, name, model, max_retries,
                                                     max_redos, instructions, task if from_given else None))
        return {"plan": json.loads(the_plan.to_json())["steps"], "results": results}

    return ctx.run(body())


async def _run_with_redos(ctx: Context, ask: Any, i: int, total: int, st: PlanStep, name: str, model: str,
                          max_retries: int, max_redos: int, instructions: str | None, task: str | None) -> str:
    """Run a step; on failure ask a human: redo (with a hypothesis) as a branch node, accept, or abort."""
    redo_of: str | None = None
    hypothesis: str | None = None
    redos = 0
    while True:
        label = name if not redos else f"{name} (redo {redos})"
        node_id = ""
        try:
            with ctx.step(label, redo_of=redo_of) as node:
                node_id = node.id
                node.result = await run_step(ctx, i, total, st, model, max_retries, instructions=instructions,
                                             hypothesis=hypothesis, task=task)
            return str(node.result)  # restored, not run again, when a resume or branch finds the step completed
        except StepFailed as exc:
            options = ["approve", "reject"] + (["redo", "modify"] if redos < max_redos else [])
            d = await ask("on_error", f"{label} failed: {exc}", options, {"error": str(exc), "redos": redos})
            if d.decision == "approve":
                return f"accepted failure: {exc}"
            if d.decision == "reject":
                raise
            redos += 1
            redo_of = node_id
            hypothesis = d.hypothesis or d.feedback
