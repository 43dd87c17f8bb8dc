"""Budgets are enforced in the runner before each LLM call: at most the budget plus one call is spent."""

from __future__ import annotations

import pytest

from labd.ipc.errors import LabdError
from tests.conftest import wait_until

BUDGET = 0.0015  # ~9 calls of the 40-call loop on the offline model's nominal prices


def _calls(c, sid):
    return [e for e in c.history(sid) if e["kind"] == "cost.recorded"]


def test_stop_on_budget_spends_at_most_one_call_more(client) -> None:
    """A 40-call loop with a budget: the runner refuses the first call after the budget is reached, so
    the cost is at most the budget plus one call; the session fails with the exact figures in its reason
    and a ``budget.exceeded`` event."""
    sid = client.start("labd_fidelityflows:spend_loop", params={"calls": 40}, budget=BUDGET)
    final = client.wait(sid, timeout=90)
    costs = [e["payload"]["cost"] for e in _calls(client, sid)]
    assert 0 < len(costs) < 40
    total = sum(costs)
    assert BUDGET <= total <= BUDGET + max(costs) + 1e-12
    assert sum(costs[:-1]) < BUDGET  # the last call was allowed because the budget was not reached yet
    assert final["status"] == "failed"
    assert "budget" in final["reason"] and "0.001500" in final["reason"], final["reason"]
    refused = [e for e in client.history(sid) if e["kind"] == "budget.exceeded"]
    assert len(refused) <= 1  # the daemon's own stop may end it first; never a second call after the budget
    if refused:
        assert refused[0]["payload"]["budget"] == BUDGET and refused[0]["payload"]["spent"] == total


def test_agents_calling_at_once_spend_at_most_one_call_more(client) -> None:
    """Eight agents calling the model at the same moment (asyncio.gather, each call 0.3 s) with a budget of about
    two and a half calls: the session still spends at most the budget plus one call (calls wait while those in flight
    could reach the budget), where each of the eight first calls used to pass the check before any was priced."""
    budget = 0.0004  # ~2.4 calls of the offline model's nominal prices (a call here ~$0.000165)
    sid = client.start("labd_fidelityflows:concurrent_spend", params={"agents": 8, "calls": 3}, budget=budget)
    final = client.wait(sid, timeout=120)
    costs = [e["payload"]["cost"] for e in _calls(client, sid)]
    assert costs and max(costs) < budget, costs
    assert budget <= sum(costs) <= budget + max(costs) + 1e-12, (sum(costs), costs)
    assert final["status"] == "failed" and "budget" in final["reason"], final["reason"]


def test_a_failed_first_call_leaves_the_bound_on_calls_at_once(client) -> None:
    """A first call that fails (no price) before eight agents call at once: the bound still holds (a failure
    counted as a call of $0 let every later call through at once: 8 calls against a budget of 2.4)."""
    budget = 0.0004
    sid = client.start("labd_fidelityflows:concurrent_spend", params={"agents": 8, "calls": 3, "fail_first": 1},
                       budget=budget)
    final = client.wait(sid, timeout=120)
    costs = [e["payload"]["cost"] for e in _calls(client, sid)]
    assert costs and budget <= sum(costs) <= budget + max(costs) + 1e-12, (sum(costs), costs)
    assert final["status"] == "failed" and "budget" in final["reason"], final["reason"]


def test_a_cheap_first_call_does_not_let_large_calls_through_at_once(client) -> None:
    """A cheap first call ("hi"), then eight agents with large requests at once: each is counted at what its own
    request may cost, so the session still spends at most the budget plus one call (counted at the cheap call's
    price, about eleven large calls went at once: 3.6 times the budget)."""
    budget = 0.0004
    sid = client.start("labd_fidelityflows:concurrent_spend", params={"agents": 8, "calls": 3, "cheap_first": True},
                       budget=budget)
    client.wait(sid, timeout=120)
    costs = [e["payload"]["cost"] for e in _calls(client, sid)]
    assert costs and min(costs) * 3 < max(costs), costs  # the first call really was the cheap one
    assert budget <= sum(costs) <= budget + max(costs) + 1e-12, (sum(costs), costs)


def test_threads_calling_at_once_share_the_sessions_budget(client) -> None:
    """Eight threads making their first LLM call at the same moment spend at most the budget plus one call: each
    built an agent factory of its own, with its own tracker and budget starting from $0, and all eight calls went."""
    budget = 0.0004
    sid = client.start("labd_fidelityflows:thread_spend", params={"threads": 8}, budget=budget)
    client.wait(sid, timeout=120)
    costs = [e["payload"]["cost"] for e in _calls(client, sid)]
    assert costs and budget <= sum(costs) <= budget + max(costs) + 1e-12, (sum(costs), costs)


def test_calls_made_inside_other_calls_do_not_wait_for_them(client) -> None:
    """An LLM call made inside another (a checking middleware after the answer, a model consulting a helper agent)
    under a budget goes at once: it waited for the call it was in to be priced, which waited for it (the session
    hung, spending nothing)."""
    sid = client.start("labd_fidelityflows:nested_calls", budget=5.0)
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    agents = {e["payload"]["agent"] for e in _calls(client, sid)}
    assert {"writer", "checker", "router", "helper"} <= agents, agents


def test_a_call_made_in_a_plain_thread_inside_another_call_does_not_wait_for_it(client) -> None:
    """A model that, within its own call, runs a helper agent in a plain ``threading.Thread`` and joins it, under a
    budget: the helper's call goes at once. Its thread does not carry the call's context, so it was not known as
    nested and waited (up to 300 s) for the call that was waiting for it (a known gap until 2026-12-07)."""
    sid = client.start("labd_fidelityflows:thread_nested_calls", budget=5.0)
    final = client.wait(sid, timeout=60)
    assert final["status"] == "completed", final["reason"]
    agents = [e["payload"]["agent"] for e in _calls(client, sid)]
    assert sorted(agents) == ["helper", "router"], agents


def test_calls_at_once_share_one_budget_pause_and_its_new_budget(client) -> None:
    """Eight agents calling at once reach a pausing budget: the session pauses once (not once per call), and the
    resume's new budget holds for every waiting call (each paused on its own: most read the resume as lifting
    the budget, spent past the new one, and one arriving after the resume stayed paused for good)."""
    sid = client.start("labd_fidelityflows:concurrent_spend", params={"agents": 8, "calls": 3}, budget=0.0004,
                       budget_action="pause")
    wait_until(lambda: client.session(sid)["status"] == "paused", timeout=60, what="budget pause")
    paused = [e for e in client.history(sid) if e["kind"] == "session.paused"]
    assert len(paused) == 1, paused
    client.resume(sid, budget=0.002)
    wait_until(lambda: sum(e["kind"] == "session.resumed" for e in client.history(sid)) == 1
               and client.session(sid)["status"] == "paused", timeout=60, what="the second budget pause")
    history = list(client.history(sid))
    resumed = [e["payload"] for e in history if e["kind"] == "session.resumed"]
    assert [r.get("budget") for r in resumed] == [0.002], resumed
    costs = [e["payload"]["cost"] for e in history if e["kind"] == "cost.recorded"]
    assert 0.002 <= sum(costs) <= 0.002 + max(costs) + 1e-12, (sum(costs), costs)
    assert sum(e["kind"] == "session.paused" for e in history) == 2
    client.resume(sid, budget=1.0)
    final = client.wait(sid, timeout=120)
    assert final["status"] == "completed", final["reason"]
    assert len(_calls(client, sid)) == 24


def test_a_stop_while_calls_wait_on_a_budget_pause_records_one_pause(client) -> None:
    """Calls in eight threads wait on one budget pause and the session is stopped: it ends cancelled with the one
    pause it had (each waiting thread's call went on to record a pause of its own, 0.25 s apart, before it ended)."""
    sid = client.start("labd_fidelityflows:thread_spend", params={"threads": 8}, budget=0.0004,
                       budget_action="pause")
    wait_until(lambda: client.session(sid)["status"] == "paused", timeout=60, what="budget pause")
    client.stop(sid, grace=30)
    final = client.wait(sid, timeout=60)
    history = list(client.history(sid))
    assert final["status"] in ("cancelled", "completed"), final["reason"]  # completed: every thread's call ended
    assert sum(e["kind"] == "session.paused" for e in history) == 1, [e["kind"] for e in history][-30:]
    assert sum(e["kind"] == "budget.exceeded" for e in history) == 1


def test_pause_on_budget_blocks_until_resumed_with_a_new_budget(client) -> None:
    """With ``budget_action pause`` the runner blocks before the call that the budget refuses (status
    paused, no more calls while paused); ``session.resume {budget}`` continues with the new budget and
    the loop completes all 40 calls; the session's limits then hold the new budget."""
    sid = client.start("labd_fidelityflows:spend_loop", params={"calls": 40}, budget=BUDGET,
                       budget_action="pause")
    wait_until(lambda: client.session(sid)["status"] == "paused", timeout=60, what="budget pause")
    wait_until(lambda: any(e["kind"] == "budget.exceeded" for e in client.history(sid)), timeout=30)
    before = _calls(client, sid)
    total = sum(e["payload"]["cost"] for e in before)
    assert BUDGET <= total <= BUDGET + max(e["payload"]["cost"] for e in before) + 1e-12
    assert len(_calls(client, sid)) == len(before)  # really paused: nothing more was spent
    client.resume(sid, budget=1.0)
    final = client.wait(sid, timeout=90)
    assert final["status"] == "completed", final["reason"]
    assert len(_calls(client, sid)) == 40
    resumed = [e for e in client.history(sid) if e["kind"] == "session.resumed"]
    assert any(e["payload"].get("budget") == 1.0 for e in resumed)
    # the record has the budget the session now runs under (labd show, labd cost)
    assert final["limits"]["budget"] == 1.0 and client.cost(sid)["budget"] == 1.0


def test_resuming_a_budget_paused_session_without_a_budget_says_the_budget_is_lifted(daemon) -> None:
    """``labd resume`` of a session its budget paused, with no ``--budget``, says on stderr that the budget is lifted
    and how to keep one, and the session then completes over it (the resume lifted it silently: a user read
    "resume requested" and found the session had spent past its budget)."""
    from tests.integration.cli_support import labd

    with daemon.client() as c:
        sid = c.start("labd_fidelityflows:spend_loop", params={"calls": 12}, budget=BUDGET, budget_action="pause")
        wait_until(lambda: c.session(sid)["status"] == "paused", timeout=60, what="budget pause")
        out = labd("--home", str(daemon.home), "resume", sid)
        assert out.returncode == 0, out.stderr
        assert f"the budget of ${BUDGET:g} is lifted" in out.stderr and "--budget N" in out.stderr, out.stderr
        final = c.wait(sid, timeout=90)
        assert final["status"] == "completed" and sum(e["payload"]["cost"] for e in _calls(c, sid)) > BUDGET
        again = c.start("labd_fidelityflows:spend_loop", params={"calls": 12}, budget=BUDGET, budget_action="pause")
        wait_until(lambda: c.session(again)["status"] == "paused", timeout=60, what="budget pause")
        out = labd("--home", str(daemon.home), "resume", again, "--budget", "1")
        assert out.returncode == 0 and "lifted" not in out.stderr, out.stderr
        assert c.wait(again, timeout=90)["status"] == "completed"


def test_a_budget_given_at_resume_holds_after_the_daemons_budget_pause(client) -> None:
    """The daemon's own budget check pauses a ``budget_action pause`` session at its next step boundary; resumed
    with a new budget (``labd resume S --budget 1``), the session goes on under that budget (before, the runner
    kept the old one and paused again at the very next LLM call, so the budget given was lost), and the record
    says so: ``session.resumed`` carries the budget, ``limits.budget`` and ``labd cost``'s budget are the new one."""
    sid = client.start("labd_fidelityflows:spend_steps", params={"steps": 4}, budget=0.00001, budget_action="pause")
    wait_until(lambda: client.session(sid)["status"] == "paused", timeout=60, what="the daemon's budget pause")
    assert [h["actor"] for h in client.session(sid)["history"] if h.get("to_status") == "paused"] == ["limit"]
    client.resume(sid, budget=1.0)
    wait_until(lambda: any(e["kind"] == "session.resumed" for e in client.history(sid)), timeout=30,
               what="the resume")
    wait_until(lambda: client.session(sid)["status"] in ("completed", "failed", "paused"), timeout=60,
               what="the session going on (or pausing again)")
    final = client.session(sid)
    assert final["status"] == "completed", final["reason"]
    assert len(_calls(client, sid)) == 4
    assert final["limits"]["budget"] == 1.0 and client.cost(sid)["budget"] == 1.0
    resumed = [e for e in client.history(sid) if e["kind"] == "session.resumed"]
    assert [e["payload"].get("budget") for e in resumed] == [1.0]


def test_a_budget_given_to_a_running_session_is_refused_not_dropped(client) -> None:
    """``labd resume S --budget N`` of a session that is running (not paused) is refused ``not_paused``, naming
    what to do: its runner only reads a budget as it continues from a pause, so the budget used to be dropped while
    the CLI printed "resume requested ... with a budget of $N". The session runs on untouched."""
    sid = client.start("demo.sleep", params={"seconds": 60})
    wait_until(lambda: client.session(sid)["status"] == "running", timeout=30, what="the session running")
    with pytest.raises(LabdError) as err:
        client.resume(sid, budget=5.0)
    assert err.value.code == "not_paused" and "not paused" in str(err.value), err.value
    row = client.session(sid)
    assert row["status"] == "running" and row["limits"]["budget"] is None
    assert not [e for e in client.history(sid) if e["kind"] == "session.resumed"]
    client.stop(sid)
    client.wait(sid, timeout=60)


def test_a_budget_given_when_resuming_a_session_started_without_one_is_enforced(client) -> None:
    """A session started with no budget, paused with ``labd pause`` and resumed with ``--budget N``, runs under N
    from then on (with its ``budget_action``, ``stop`` by default): its runner used to have no budget object to
    change, dropped N, and the session went on spending without a limit."""
    sid = client.start("labd_fidelityflows:spend_steps", params={"steps": 4})
    wait_until(lambda: _calls(client, sid), timeout=60, what="the first LLM call")
    client.pause(sid)
    wait_until(lambda: client.session(sid)["status"] == "paused", timeout=60, what="the pause")
    client.resume(sid, budget=0.00001)  # less than the first call already cost: the next call is refused
    final = client.wait(sid, timeout=90)
    assert final["status"] == "failed" and "budget" in final["reason"], final["reason"]
    assert len(_calls(client, sid)) == 1
    resumed = [e for e in client.history(sid) if e["kind"] == "session.resumed"]
    assert [e["payload"].get("budget") for e in resumed] == [0.00001]
    assert final["limits"]["budget"] == 0.00001
