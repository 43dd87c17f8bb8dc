"""Workflows for the capture-fidelity tests: ag2 written the way ag2's documentation writes it.

No tracking code anywhere. ``plain_ag2`` builds its agents with ``ag2.Agent(...)`` directly (or, with
``tracked=True``, through ``ctx.agent`` — its twin); both run a question, a tool call and an ag2 network
workflow (a group chat where a triage agent hands off to an engineer through a ``Handoff`` tool), on the
offline scripted model.
"""

from __future__ import annotations

import asyncio
from typing import Any

TRIAGE_PROMPT = ("You route questions to the right specialist.\n"
                 'CALL_TOOL: transfer_to_eng {"reason": "needs an engineer"}')


def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def plain_ag2(ctx: Any, tracked: bool = False) -> str:
    """Two agents, a tool and a group chat with a handoff; ``tracked`` builds the agents with ctx.agent."""
    from ag2 import Agent
    from ag2.knowledge import MemoryKnowledgeStore
    from ag2.network import Handoff, Hub
    from ag2.network.adapters.workflow import WORKFLOW_TYPE
    from ag2.network.channel import ChannelState
    from ag2.network.transitions import (
        AgentTarget,
        FromSpeaker,
        TerminateTarget,
        ToolCalled,
        Transition,
        TransitionGraph,
    )

    from labd.runner.agents.offline import OfflineModelConfig

    config = OfflineModelConfig()

    def make(name: str, prompt: str = "", tools: tuple[Any, ...] = ()) -> Any:
        if tracked:
            return ctx.agent(name, prompt, tools=tools)
        return Agent(name, prompt, config=config, tools=tools)

    async def body() -> str:
        researcher = make("researcher", "ROLE: researcher")
        counter = make("counter", 'Count words.\nCALL_TOOL: word_count {"text": "three little words"}',
                       tools=(word_count,))
        first = await researcher.ask("What limits the speed of light?")
        second = await counter.ask("How many words?")

        with ctx.step("group chat"):
            hub = await Hub.open(MemoryKnowledgeStore())
            user = await hub.register(make("user"))
            triage_agent = make("triage", TRIAGE_PROMPT)
            eng_agent = make("eng", "You are a senior engineer.")
            triage = await hub.register(triage_agent)
            eng = await hub.register(eng_agent)
            eng_id = eng.agent_id

            @triage_agent.tool
            async def transfer_to_eng(reason: str = "") -> Handoff:
                """Transfer the conversation to the engineer."""
                return Handoff(target=eng_id, reason=reason)

            graph = TransitionGraph(
                initial_speaker=user.agent_id,
                transitions=[
                    Transition(when=FromSpeaker(user.agent_id), then=AgentTarget(triage.agent_id)),
                    Transition(when=ToolCalled("transfer_to_eng"), then=AgentTarget(eng.agent_id)),
                    Transition(when=FromSpeaker(eng.agent_id), then=TerminateTarget(reason="answered")),
                ],
                default_target=TerminateTarget(reason="done"),
                max_turns=4,
            )
            channel = await user.open(type=WORKFLOW_TYPE, target=[triage.agent_id, eng.agent_id],
                                      knobs={"graph": graph.to_dict()})
            await channel.send("How do I fix the build?")
            for _ in range(600):
                meta = await hub.get_channel(channel.channel_id)
                if meta.state == ChannelState.CLOSED:
                    break
                await asyncio.sleep(0.05)
            await hub.close()
        return f"{first.body} | {second.body} | {meta.close_reason}"

    return asyncio.run(body())


def big_text(chars: int) -> str:
    """A deterministic text of ``chars`` characters, with multi-byte characters in it."""
    alphabet = "abcdefghijklmnopqrstuvwxyz ÄÖÜßéè€😀\n"
    return "".join(alphabet[(i * 7 + i // 13) % len(alphabet)] for i in range(chars))


def big_reply(ctx: Any, chars: int = 100_000) -> int:
    """One agent whose model (ag2's TestConfig) answers with a ``chars``-character text."""
    from ag2 import Agent
    from ag2.testing import TestConfig

    async def body() -> int:
        agent = Agent("writer", "You write long texts.", config=TestConfig(big_text(chars)))
        reply = await agent.ask("Write it all.")
        return len(reply.body or "")

    return asyncio.run(body())


def shared_prompt(ctx: Any, calls: int = 500, prompt_chars: int = 80_000) -> int:
    """``calls`` LLM calls by one agent whose system prompt is ``prompt_chars`` long (~20 k tokens)."""
    from ag2 import Agent

    from labd.runner.agents.offline import OfflineModelConfig

    async def body() -> int:
        agent = Agent("reader", big_text(prompt_chars), config=OfflineModelConfig())
        for i in range(calls):
            await agent.ask(f"question {i}")
        return calls

    return asyncio.run(body())


def spend_loop(ctx: Any, calls: int = 40) -> int:
    """``calls`` LLM calls in a loop (for budgets); returns how many were answered."""
    from ag2 import Agent

    from labd.runner.agents.offline import OfflineModelConfig

    async def body() -> int:
        agent = Agent("spender", "ROLE: researcher", config=OfflineModelConfig())
        done = 0
        for i in range(calls):
            await agent.ask(f"question {i}: " + "x" * 400)
            done += 1
        return done

    return asyncio.run(body())


def _slow_model(latency: float, fail_first: int = 0, inside: Any = None) -> Any:
    """An offline model config whose calls take ``latency`` seconds; its first ``fail_first`` calls raise, and each
    call first awaits ``inside()`` when given (a model that consults another agent within its own call)."""
    from labd.runner.agents.offline import OfflineClient, OfflineModelConfig

    made = {"calls": 0}

    class SlowClient(OfflineClient):
        async def __call__(self, *args: Any, **kwargs: Any) -> Any:
            made["calls"] += 1
            if made["calls"] <= fail_first:
                raise RuntimeError("the model is unavailable (a transient failure)")
            if inside is not None:
                await inside()
            await asyncio.sleep(latency)
            return await super().__call__(*args, **kwargs)

    class SlowConfig(OfflineModelConfig):
        def copy(self) -> SlowConfig:
            return SlowConfig(self.model)

        def create(self) -> OfflineClient:
            return SlowClient(self.model)

    return SlowConfig()


def concurrent_spend(ctx: Any, agents: int = 8, calls: int = 3, latency: float = 0.3, fail_first: int = 0,
                     cheap_first: bool = False) -> int:
    """``agents`` agents at once (``asyncio.gather``), each making ``calls`` LLM calls that take ``latency`` seconds
    on the offline model (for budgets under concurrent calls); with ``fail_first``, a first call that fails (caught)
    comes before them, with ``cheap_first`` a cheap one. Returns how many were answered."""
    from ag2 import Agent

    async def one(i: int) -> int:
        agent = Agent(f"spender{i}", "ROLE: researcher", config=_slow_model(latency))
        for _ in range(calls):
            await agent.ask("question: " + "x" * 400)
        return calls

    async def body() -> int:
        if fail_first:
            try:
                await Agent("unlucky", "ROLE: researcher", config=_slow_model(latency, fail_first)).ask("question")
            except Exception as exc:  # noqa: BLE001 - the workflow carries on, as a retrying one would
                print("the first call failed:", exc)
        if cheap_first:  # a call far cheaper than the ones that follow
            await Agent("greeter", "ROLE: researcher", config=_slow_model(latency)).ask("hi")
        return sum(await asyncio.gather(*(one(i) for i in range(agents))))

    return asyncio.run(body())


def thread_spend(ctx: Any, threads: int = 8) -> int:
    """``threads`` threads each make their first LLM call at the same moment (a barrier), each on its own event
    loop; a thread the budget refuses ends quietly. Returns how many calls were answered."""
    import threading

    from ag2 import Agent

    barrier = threading.Barrier(threads)
    answered: list[int] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            asyncio.run(Agent(f"thread{i}", "ROLE: researcher", config=_slow_model(0.3)).ask("question: " + "x" * 400))
            answered.append(i)
        except BaseException:  # noqa: BLE001 - BudgetExceeded: this thread's call was refused
            pass

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return len(answered)


def nested_calls(ctx: Any) -> str:
    """LLM calls made inside other LLM calls: a middleware (inside labd's tracking) that checks each answer with
    another agent, and a model that consults a helper agent within its own call."""
    from ag2 import Agent
    from ag2.middleware import BaseMiddleware

    class Verify(BaseMiddleware):
        async def on_llm_call(self, call_next: Any, events: Any, context: Any) -> Any:
            answer = await call_next(events, context)
            await Agent("checker", "ROLE: researcher", config=_slow_model(0.05)).ask("is this right?")
            return answer

    async def consult() -> None:
        await Agent("helper", "ROLE: researcher", config=_slow_model(0.05)).ask("a sub-question")

    async def body() -> str:
        writer = ctx.agent("writer", "ROLE: researcher", model=_slow_model(0.05),
                           middleware=[lambda event, context: Verify(event, context)])
        await writer.ask("write")
        await Agent("router", "ROLE: researcher", config=_slow_model(0.05, inside=consult)).ask("route")
        return "done"

    return asyncio.run(body())


def thread_nested_calls(ctx: Any) -> str:
    """A model that consults a helper agent within its own call from a plain ``threading.Thread`` it starts and joins
    (not ``asyncio.to_thread``: the thread does not carry the call's context)."""
    import threading

    from ag2 import Agent

    async def consult_in_a_thread() -> None:
        def helper() -> None:
            asyncio.run(Agent("helper", "ROLE: researcher", config=_slow_model(0.05)).ask("a sub-question"))
        t = threading.Thread(target=helper)
        t.start()
        t.join()

    async def body() -> str:
        router = ctx.agent("router", "ROLE: researcher", model=_slow_model(0.05, inside=consult_in_a_thread))
        await router.ask("route")
        return "done"

    return asyncio.run(body())


def spend_steps(ctx: Any, steps: int = 4) -> int:
    """One LLM call per step; each step then waits (up to 30 s) for the daemon's pause request that a crossed
    budget sends, so the pause lands at the next step boundary, before that step's call (for budgets)."""
    import time

    from ag2 import Agent

    from labd.runner.agents.offline import OfflineModelConfig

    agent = Agent("spender", "ROLE: researcher", config=OfflineModelConfig())
    for i in range(steps):
        with ctx.step(f"spend {i}"):
            asyncio.run(agent.ask(f"question {i}: " + "x" * 400))
            deadline = time.monotonic() + 30
            while i == 0 and ctx._pause is None and time.monotonic() < deadline:  # noqa: SLF001 - the test's sync
                time.sleep(0.01)
    return steps


def delete_file(ctx: Any) -> str:
    """A step writes a file, a later step deletes it, a third writes another."""
    from pathlib import Path

    with ctx.step("write"):
        Path("draft.txt").write_text("first draft")
    with ctx.step("remove"):
        Path("draft.txt").unlink()
    with ctx.step("final"):
        Path("final.txt").write_text("final")
    return "ok"


def concurrent_writers(ctx: Any) -> str:
    """Two steps run at once in threads and write files at interleaved times; then a step alone."""
    import threading
    from pathlib import Path

    turn = [threading.Event() for _ in range(4)]

    def writer(name: str, mine: tuple[int, int], files: tuple[str, str]) -> None:
        with ctx.step(name):
            for i, path in zip(mine, files, strict=True):
                if i:
                    turn[i - 1].wait(30)
                Path(path).write_text(name)
                turn[i].set()

    a = threading.Thread(target=writer, args=("A", (0, 2), ("a1.txt", "a2.txt")))
    b = threading.Thread(target=writer, args=("B", (1, 3), ("b1.txt", "b2.txt")))
    a.start()
    b.start()
    a.join()
    b.join()
    with ctx.step("alone"):
        Path("c.txt").write_text("alone")
    return "ok"


def long_output(ctx: Any, lines: int = 3000) -> str:
    """An agent runs code that prints more than the model is shown (ag2 TestConfig scripts the call)."""
    import json

    from ag2.events import ToolCallEvent
    from ag2.testing import TestConfig

    code = f"for i in range({lines}):\n    print(f'line {{i:05d}} ' + 'x' * 20)\n"

    async def body() -> str:
        coder = ctx.agent("coder", "You run code.", code_execution=True,
                          model=TestConfig(ToolCallEvent("run_code", arguments=json.dumps({"code": code})), "done"))
        return (await coder.ask("Print the table.")).body or ""

    return asyncio.run(body())
