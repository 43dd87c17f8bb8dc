"""Policies in the runner: every LLM call, tool call and code execution asks the session's rules first.

The rules (:mod:`labd.ipc.policy`: the daemon's ``[[policy]]`` tables, then the session's own) come in the
start spec. The tracking middleware asks :class:`PolicyGate` before an LLM call and before a tool runs;
``run_code`` asks before it executes a program. Each decision is a ``policy.decision`` event on the node the
action belongs to. What a refusal does, so that the agent (and the session) goes on:

- an LLM call: the turn ends with a reply ``POLICY DENIED: ...`` instead of the model's (as ag2's own halt
  middleware does); the workflow sees that text as the agent's answer;
- a tool call: the tool does not run; its result (an error result) is the refusal, which the model reads;
- a code execution: the program does not run; ``run_code`` returns the refusal.

``require_approval`` asks a human through the session's approvals (kind ``policy``, options approve /
reject): approve runs the action, reject refuses it (with the human's feedback in the refusal).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from labd.ipc.policy import Action, Decision, Policy, Rule
from labd.runner.agents.budget import ADMIT_POLL_S, ADMIT_WAIT_MAX_S
from labd.runner.agents.inflight import CallsInFlight
from labd.runner.approvals import Approvals
from labd.runner.context import Cancelled

__all__ = ["PolicyGate", "PolicyDenied", "refused_response"]

#: how much of the code an approver sees in the approval's context (the full code is in the record anyway)
CODE_PREVIEW = 4000


class PolicyDenied(Exception):
    """The error carried by a refused tool call's result (the model reads its message)."""


class PolicyGate:
    """The session's policy, with what a decision needs: costs so far, the event stream, the approvals."""

    def __init__(self, policy: Policy, emit: Callable[..., int], approvals: Approvals | None,
                 costs: Callable[[str | None], tuple[float, float]],
                 check_stop: Callable[[], None] | None = None) -> None:
        self.policy = policy
        self.emit = emit
        self.approvals = approvals
        #: agent -> (USD this agent spent so far, USD the session spent so far)
        self.costs = costs
        #: raises (the session's Cancelled) once a stop was asked for: a call waiting for others then ends
        self.check_stop = check_stop or (lambda: None)
        self.in_flight = CallsInFlight()
        #: whether a rule on LLM calls looks at costs: only then are calls in flight counted (and waited for)
        self.costly = any((r.effect == "cap" or r.min_agent_cost is not None or r.min_session_cost is not None)
                          and (r.actions is None or "llm" in r.actions) for r in policy.rules)

    def action(self, kind: str, agent: str | None, **fields: Any) -> Action:
        agent_cost, session_cost = self.costs(agent)
        return Action(kind, agent=agent, agent_cost=agent_cost, session_cost=session_cost, **fields)

    async def check_llm(self, agent: str, model: str, node: str | None, *, estimate: float = 0.0,
                        nested: bool = False, paused: Callable[[], bool] = lambda: False) -> tuple[str | None,
                                                                                                float | None]:
        """Decide an LLM call as :meth:`check` does, once the calls in flight could no longer change the decision
        (:mod:`labd.runner.agents.inflight`): it waits for them meanwhile, unless ``nested`` (made inside one of
        them), at most :data:`ADMIT_WAIT_MAX_S`, not counting the time the session's budget pauses it (``paused``).
        Returns (the refusal or None, what the call reserved while in flight, ``estimate`` at least: None when
        nothing was, which :meth:`CallsInFlight.priced` is told when it ends). A call a human approves is decided
        again on the costs of then."""
        if not self.costly:  # no rule looks at costs: nothing in flight can change a decision
            return await self.check(self.action("llm", agent, model=model), node), None
        waited = 0.0
        approved: Rule | None = None  # the rule a human said yes to
        while True:
            decided: list[tuple[Action, Decision]] = []
            patient = not (nested or waited >= ADMIT_WAIT_MAX_S)
            decide = functools.partial(self._decide, agent, model, patient, approved, decided)
            reserve = self.in_flight.admit(agent, decide, estimate)
            if not decided:
                self.check_stop()  # a stop while it waits: it ends, it does not start
                await asyncio.sleep(ADMIT_POLL_S)
                if not paused():  # the calls it waits for wait for a human's resume: that time is not counted
                    waited += ADMIT_POLL_S
                continue
            action, decision = decided[0]
            if waited >= ADMIT_WAIT_MAX_S:
                self.emit("log", {"level": "warning", "logger": "labd.policy",
                                  "event": f"an LLM call by {agent} waited {ADMIT_WAIT_MAX_S:.0f} s for the calls in "
                                           "flight and was decided on the costs priced so far"}, node)
            if reserve is not None:
                if approved is None or decision.rule is not approved:  # (a human's yes was recorded already)
                    self._record(decision, action, node, "allowed")
                return None, reserve
            if decision.outcome == "deny" or self.approvals is None:
                self._record(decision, action, node, "denied")
                return refusal(decision, action), None
            refused = await self._ask(decision, action, node)
            if refused is not None:
                return refused, None
            approved = decision.rule  # approved: decided again (and reserved) on the costs of now

    def _decide(self, agent: str, model: str, patient: bool, approved: Rule | None,
                decided: list[tuple[Action, Decision]], pending: tuple[float, float] | None) -> bool | None:
        """:meth:`check_llm`'s step under the calls in flight's lock: None (wait: ``patient``, and the calls in
        flight could change the decision), else whether the call goes ahead (allowed, or by the rule a human
        ``approved``), its action and decision added to ``decided``."""
        action = self.action("llm", agent, model=model)  # the costs, read after the calls in flight
        decision = self.policy.evaluate(action)
        if patient and self._unsettled(action, decision, pending):
            return None
        decided.append((action, decision))
        return decision.outcome == "allow" or (approved is not None and decision.rule is approved)

    def _unsettled(self, action: Action, decision: Decision, pending: tuple[float, float] | None) -> bool:
        """Could the calls in flight (``pending``: what they may cost), once priced, make another rule than
        ``decision``'s decide ``action``?"""
        if pending is None or not any(pending):
            return False
        later = dataclasses.replace(action, agent_cost=action.agent_cost + pending[0],
                                    session_cost=action.session_cost + pending[1])
        return self.policy.evaluate(later).rule is not decision.rule

    async def check(self, action: Action, node: str | None, *, code: str | None = None) -> str | None:
        """Decide ``action``; None: go ahead, else the refusal text the agent gets."""
        decision = self.policy.evaluate(action)
        if decision.outcome == "allow":
            self._record(decision, action, node, "allowed")
            return None
        if decision.outcome == "deny" or self.approvals is None:
            self._record(decision, action, node, "denied")
            return refusal(decision, action)
        return await self._ask(decision, action, node, code)

    def _record(self, decision: Decision, action: Action, node: str | None, outcome: str, **extra: Any) -> None:
        """The ``policy.decision`` event (rule null: no rule applies; source/index only with a rule)."""
        base = {**action.to_dict(), **{k: v for k, v in decision.to_dict().items() if v is not None or k == "rule"}}
        self.emit("policy.decision", {**base, "outcome": outcome, **extra}, node)

    async def _ask(self, decision: Decision, action: Action, node: str | None, code: str | None = None) -> str | None:
        """A ``require_approval`` decision: ask a human (the session's approvals); None if approved, else the
        refusal."""
        assert self.approvals is not None  # only asked with approvals
        self._record(decision, action, node, "pending")
        rule = decision.rule
        assert rule is not None  # an approval outcome always comes from a rule
        context: dict[str, Any] = {"policy_rule": rule.name, "source": rule.source, **action.to_dict()}
        if code is not None:
            context["code"] = code[:CODE_PREVIEW]
        answer = await asyncio.to_thread(
            self.approvals.request, "policy", f"{decision.reason}: approve?", options=("approve", "reject"),
            context=context, timeout=rule.timeout, policy=rule.on_timeout, node_id=node, agent=action.agent,
            on_cancel=_stop)
        self._record(decision, action, node, "allowed" if answer.approved else "denied", by=answer.by,
                     **({"feedback": answer.feedback} if answer.feedback else {}))
        if answer.approved:
            return None
        why = f"{decision.reason}, and {answer.by} rejected it" + (f": {answer.feedback}" if answer.feedback else "")
        return refusal(Decision(rule, "deny", why), action)


def _stop() -> None:
    # a stop while a human is asked ends the wait at once (cooperatively), not after the SIGTERM grace
    raise Cancelled("stop requested while waiting for a policy approval")


def refusal(decision: Decision, action: Action) -> str:
    """The text an agent gets instead of the action's result: what was refused, why, and what to do."""
    rule = decision.rule
    by = f" (policy rule {rule.name!r})" if rule is not None and rule.name not in decision.reason else ""
    what = {"llm": "This LLM call was not made", "tool": f"The tool {action.tool} was not run",
            "code": "The code was not run"}[action.kind]
    return (f"POLICY DENIED: {decision.reason}{by}. {what}; do not retry it the same way - continue without it, "
            "or say what you would need.")


def refused_response(text: str, model: str | None) -> Any:
    """A model response that ends the agent's turn with ``text`` (no model was called)."""
    from ag2.events import ModelMessage, ModelResponse

    return ModelResponse(ModelMessage(text), model=model, finish_reason="policy")


def refused_tool_result(event: Any, text: str) -> Any:
    """A tool's error result carrying the refusal (the model reads ``text``; the tool never ran)."""
    from ag2.events import ToolErrorEvent, ToolResult

    return ToolErrorEvent(parent_id=event.id, name=event.name, error=PolicyDenied(text), result=ToolResult(text))
