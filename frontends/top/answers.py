"""``labd top``'s answers to approvals (mixed into :class:`~labd.frontends.top.app.TopApp`): approve, reject,
modify, an option without a key of its own, and an approval viewed in full first. Each answer names the approval it
answers (``approval_id``), so one answered elsewhere meanwhile is refused, never a newer one answered by mistake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import App

from labd.frontends.cli.safetext import text as safe_text
from labd.ipc import Client, LabdError

from .feed import Feed
from .widgets import ApprovalScreen, FeedbackScreen, other_options

__all__ = ["ApprovalActions"]


class ApprovalActions(App[int]):
    """The approval actions of ``labd top``; the app provides the state they read (``pending``, ``selected``,
    ``feed``) and the request and detail helpers."""

    pending: dict[str, list[dict[str, Any]]]
    selected: str | None
    feed: Feed | None

    def _request(self, what: str, fn: Callable[[Client, str], Any]) -> None:  # provided by TopApp
        raise NotImplementedError

    def refresh_detail(self) -> None:  # provided by TopApp
        raise NotImplementedError

    def _approval(self, decision: str) -> dict[str, Any] | None:
        pending = self.pending.get(self.selected or "") or []
        if not pending:
            self.notify("no approval waiting for this session", severity="warning")
            return None
        ap = pending[0]
        return ap if self._offers(ap, decision) else None

    def _offers(self, ap: dict[str, Any], decision: str) -> bool:
        """Is ``decision`` one of ``ap``'s options? Says so when not."""
        if decision in (ap.get("options") or []):
            return True
        self.notify(safe_text(f"'{decision}' is not an option here: {', '.join(ap.get('options') or [])}"),
                    severity="warning", markup=False)  # the options are the session's: not markup
        return False

    def _resolve(self, ap: dict[str, Any], decision: str, feedback: str | None, hypothesis: str | None = None) -> None:
        self.pending.pop(ap["session_id"], None)  # answered: the next poll brings any further request
        self._request(decision, lambda c, s: c.resolve(ap["session_id"], decision, feedback=feedback or None,
                                                       hypothesis=hypothesis, approval_id=ap["id"], by="labd top"))
        self.refresh_detail()

    def action_other(self) -> None:
        """Answer with an option no key of its own gives (``redo`` with a hypothesis, a workflow's own options):
        the option is asked for (the first one filled in), then the text that goes with it."""
        pending = self.pending.get(self.selected or "") or []
        others = other_options(pending[0]) if pending else []
        if not others:
            self.notify("no approval with other options than approve / reject / modify waits here", severity="warning")
            return
        ap = pending[0]

        def text_for(option: str | None) -> None:
            option = (option or "").strip()
            if not option:
                return
            if option not in others:
                self.notify(safe_text(f"'{option}' is not an option here: {', '.join(others)}"), severity="warning",
                            markup=False)
                return
            redo = option == "redo"  # the daemon asks a redo for its hypothesis

            def send(text: str | None) -> None:
                if text is not None:
                    self._resolve(ap, option, None if redo else text, text if redo else None)
            self.push_screen(FeedbackScreen(f"{option} — {ap['session_id']}", str(ap.get("prompt")), redo,
                                            placeholder="the hypothesis to try" if redo else "feedback"), send)

        self.push_screen(FeedbackScreen(f"answer {ap['session_id']} with", "options: " + " / ".join(others), True,
                                        placeholder="an option", value=others[0]), text_for)

    def action_view_approval(self) -> None:
        """The selected session's waiting approval in full (its whole prompt and context: the list the feed polls
        leaves a long context out), to read before deciding; ``a`` / ``r`` there answer it."""
        pending = self.pending.get(self.selected or "") or []
        if not pending or self.feed is None:
            self.notify("no approval waiting for this session", severity="warning")
            return
        ap, feed = pending[0], self.feed

        def whole(c: Client) -> dict[str, Any] | None:
            reply = c.request("approvals.list", session=ap["session_id"], status="pending", full=True)
            return next((a for a in reply["approvals"] if a["id"] == ap["id"]), None)

        async def go() -> None:
            try:
                full = await feed.call(whole)
            except LabdError as exc:
                self.notify(safe_text(f"approval {ap['id']}: {exc.message}"), severity="error", markup=False)
                return
            if full is None:  # answered elsewhere (or its session ended) since the list was polled
                self.notify(safe_text(f"approval {ap['id']} is no longer pending (answered elsewhere, or its session "
                                      "ended)"), severity="warning", markup=False)
                return

            def decided(decision: str | None) -> None:  # answers the approval shown, whatever is pending now
                if decision is None or not self._offers(ap, decision):
                    return
                if decision == "approve":
                    self._resolve(ap, "approve", None)
                else:
                    self._ask_feedback(decision, required=False, ap=ap)
            self.push_screen(ApprovalScreen(full), decided)

        self.run_worker(go(), group="requests")

    def action_approve(self) -> None:
        ap = self._approval("approve")
        if ap is not None:
            self._resolve(ap, "approve", None)

    def _ask_feedback(self, decision: str, required: bool, ap: dict[str, Any] | None = None) -> None:
        """Ask for the feedback of ``decision`` and answer with it: ``ap`` (one the user viewed), else the selected
        session's first pending approval."""
        ap = ap or self._approval(decision)
        if ap is None:
            return

        def done(feedback: str | None) -> None:
            if feedback is not None:
                self._resolve(ap, decision, feedback)

        self.push_screen(FeedbackScreen(f"{decision} — {ap['session_id']}", str(ap.get("prompt")), required), done)

    def action_reject(self) -> None:
        self._ask_feedback("reject", required=False)

    def action_modify(self) -> None:
        self._ask_feedback("modify", required=True)
