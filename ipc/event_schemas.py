"""The schema of every event kind: per kind, its payload's fields, the types each accepts, and whether it is
required. :mod:`labd.ipc.events` validates against it (and compiles it once for ingest's hot path); docs/protocol.md
describes each kind."""

from __future__ import annotations

__all__ = ["SCHEMAS", "NUM", "ANY", "TEXT"]

NUM = (int, float)
ANY = object
#: a text field that may hold a blob reference ``{"$blob": sha256, "size": n}`` instead of the text
TEXT = (str, dict)

# kind -> {field: (accepted types, required)}
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...] | type, bool]]] = {
    # lifecycle (daemon unless noted)
    "session.created": {"workflow": (str, True), "name": (str, True), "params": (dict, True),
                        "limits": (dict, True), "workdir": (str, True), "tags": (dict, False),
                        "payload": (str, False),  # a submitted function's pickle (base64)
                        "sys_path": (list, False),  # the client's cwd + PYTHONPATH, first on the runner's sys.path
                        "placement": (dict, False),  # Ray launcher: {on: "ray", gpus, resources}
                        "priority": (int, False),  # its run-queue priority (absent: 0), which resumes and branches keep
                        "agents": (dict, False),  # --agent overrides {role asked for: role used}
                        "skill": (dict, False),  # started from a skill: {name, version, origin_session}
                        "policy": (list, False),  # the session's own policy rules (labd run --policy FILE)
                        "idempotency_key": (str, False), "request_digest": (str, False),
                        # lineage: started from another session (origin branch | replay | skill; branch_node: where)
                        "parent_id": (str, False), "origin": (str, False), "branch_node": (str, False)},
    # an ended session (failed, lost, cancelled) continued by a new runner from its last checkpoint (daemon)
    "session.continued": {"by": (str, True), "reason": (str, True), "from_status": (str, True),
                          "limits": (dict, False), "checkpoints": (int, False), "interrupted": (list, False)},
    # waits for capacity (run queue); why: what it waits for when that is not capacity (a full disk)
    "session.queued": {"position": (int, True), "priority": (int, True), "why": (str, False)},
    "session.launched": {"pid": (int, True), "create_time": (NUM, True), "launcher": (str, True),
                         "recovered": (bool, False), "run_key": (bool, False)},
    "session.started": {"pid": (int, True), "workdir": (str, True)},  # runner
    "session.finished": {"outcome": (str, True), "error": (str, False), "traceback": (str, False),
                         "result": (ANY, False)},  # runner: what the workflow did
    "session.stopping": {"by": (str, True), "reason": (str, True), "step": (str, True), "grace": (NUM, False)},
    "session.ended": {"status": (str, False), "reason": (str, False), "exit_code": (int, False),
                      "signal": (int, False), "ended_by": (str, True), "lost_reason": (str, False)},
    # Ray launcher: where a session's actor runs (node id, address, the runner's pid there, its work directory)
    "session.placed": {"node": (str, True), "ip": (str, True), "pid": (int, True), "workdir": (str, True),
                       "actor": (str, False), "hostname": (str, False), "actor_pid": (int, False)},
    "session.adopted": {"pid": (int, True), "reason": (str, False)},  # reason: why not at a daemon's start
    # output
    "output": {"stream": (str, True), "text": (str, True)},
    # the session's output passed its cap (limits.output, bytes): once when dropping starts, then once more
    # with the total dropped (runner: at its end; daemon backstop, by "daemon": before session.ended)
    "output.truncated": {"cap": (int, True), "dropped": (int, False), "by": (str, True), "kinds": (dict, False)},
    "log": {"level": (str, True), "event": (str, True), "logger": (str, False), "fields": (dict, False)},
    "session.paused": {"by": (str, True), "reason": (str, True)},  # runner, at a step boundary
    # runner; budget: a new one given; budget_lifted: the budget that paused it no longer holds (resumed without one)
    "session.resumed": {"by": (str, True), "budget": (NUM, False), "budget_lifted": (bool, False)},
    "session.pause_requested": {"by": (str, True), "reason": (str, True)},  # daemon
    # workflow (DAG): steps and phases are nodes; edges are [[src node, type], ...] into this node
    "step.started": {"name": (str, True), "kind": (str, False), "parent_node": (str, False),
                     "edges": (list, False), "redo_of": (str, False), "attempt": (int, False),
                     "planned": (bool, False)},
    "step.finished": {"name": (str, True), "status": (str, True), "duration": (NUM, True),
                      "error": (str, False)},
    # a step announced by a plan, not run yet: a DAG node with status "planned" (step.started on the same
    # node_id, with planned: true, turns it into the running step)
    "step.planned": {"name": (str, True), "kind": (str, False), "parent_node": (str, False)},
    # durable steps (runner): a completed step's checkpoint (result, agents' last requests, the work
    # directory's manifest; digests name objects in the session's checkpoint store), the work directory
    # restored before a resumed or branched workflow runs, and a re-executed workflow that left its record
    "step.checkpoint": {"path": (str, True), "name": (str, True), "manifest": (str, True), "files": (int, True),
                        "bytes": (int, True), "new_objects": (int, True), "new_bytes": (int, True),
                        "result": (str, False), "result_inline": (str, False), "result_preview": (str, False),
                        "result_error": (str, False), "manifest_delta": (dict, False),
                        "agents": (dict, False), "duration": (NUM, False), "reused": (bool, False),
                        "partial": (bool, False)},
    "checkpoint.restored": {"manifest": (str, True), "files": (int, True), "duration": (NUM, True),
                            "removed": (int, False), "written": (int, False), "kept": (int, False)},
    "step.diverged": {"path": (str, True), "expected": (str, True), "got": (str, True),
                      "recorded_node": (str, False)},
    # an attempt failed and the work is tried again (node_id: the enclosing step)
    "retry": {"name": (str, True), "attempt": (int, True), "of": (int, False), "error": (str, True),
              "previous_node": (str, True)},
    "custom": {"name": (str, True), "data": (ANY, False)},
    # agents (runner; node_id = the agent-turn node or the step it runs in)
    "agent.turn.started": {"agent": (str, True), "parent_node": (str, False), "input": (TEXT, False),
                           "edges": (list, False)},
    "agent.turn.finished": {"agent": (str, True), "status": (str, True), "duration": (NUM, True),
                            "output": (TEXT, False), "error": (str, False)},
    "agent.message": {"agent": (str, True), "content": (TEXT, True)},
    # control passed from one agent to another in an ag2 network channel (group chat, swarm, handoff tool)
    "agent.handoff": {"agent": (str, True), "from": (str, True), "to": (str, True), "channel": (str, True),
                      "from_node": (str, False), "tool": (str, False), "reason": (str, False)},
    "llm.request": {"agent": (str, True), "model": (str, True), "provider": (str, True), "offline": (bool, True),
                    "messages": (int, True), "input": (TEXT, False), "request": (dict, False)},
    "llm.response": {"agent": (str, True), "model": (str, True), "provider": (str, True), "offline": (bool, True),
                     "status": (str, True), "duration": (NUM, True), "usage": (dict, False),
                     "content": (TEXT, False), "tool_calls": (list, False), "finish_reason": (str, False),
                     "error": (str, False)},
    "tool.call": {"agent": (str, True), "call_id": (str, True), "name": (str, True), "arguments": (ANY, False)},
    "tool.result": {"agent": (str, True), "call_id": (str, True), "name": (str, True), "status": (str, True),
                    "duration": (NUM, True), "result": (TEXT, False), "error": (TEXT, False)},
    "code.execution": {"agent": (str, True), "language": (str, True), "code": (TEXT, True),
                       "exit_code": (int, True), "output": (TEXT, True), "duration": (NUM, True),
                       "call_id": (str, False), "output_dropped": (int, False)},
    "subagent.started": {"agent": (str, True), "child": (str, True), "task_id": (str, True),
                         "objective": (str, False)},
    "subagent.finished": {"agent": (str, True), "child": (str, True), "task_id": (str, True),
                          "status": (str, True), "result": (str, False), "error": (str, False)},
    # cost (runner prices each LLM call with the session's price table)
    "cost.recorded": {"agent": (str, True), "model": (str, True), "prompt_tokens": (int, True),
                      "completion_tokens": (int, True), "cost": (NUM, True), "currency": (str, True),
                      "offline": (bool, True), "price_source": (str, False)},
    # the runner refused an LLM call because the session's budget is spent (then stops or pauses)
    "budget.exceeded": {"spent": (NUM, True), "budget": (NUM, True), "action": (str, True), "reason": (str, True),
                        "agent": (str, False)},
    # a policy rule decided an LLM call, tool call or code execution before it happened (runner); outcome
    # allowed | denied | pending (an approval was asked; a second decision follows with its answer)
    "policy.decision": {"action": (str, True), "effect": (str, True), "outcome": (str, True), "reason": (str, True),
                        "rule": (str, False), "source": (str, False), "index": (int, False), "agent": (str, False),
                        "tool": (str, False), "model": (str, False), "language": (str, False),
                        "network": (bool, False), "agent_cost": (NUM, False), "session_cost": (NUM, False),
                        "by": (str, False), "feedback": (str, False)},
    # files in the work directory, attributed to the node (and agent / tool) that produced them; ``restored``: made
    # so by a resume's or branch's restore of a checkpoint (no node), recorded against what the session had;
    # ``path_b64``: a name that is not UTF-8, its exact bytes (``path`` is then its display form: runner/names.py)
    "file.created": {"path": (str, True), "sha256": (str, True), "size": (int, True), "kind": (str, True),
                     "agent": (str, False), "tool": (str, False), "ambiguous": (bool, False),
                     "candidates": (list, False), "restored": (bool, False), "path_b64": (str, False)},
    "file.changed": {"path": (str, True), "sha256": (str, True), "size": (int, True), "kind": (str, True),
                     "agent": (str, False), "tool": (str, False), "ambiguous": (bool, False),
                     "candidates": (list, False), "restored": (bool, False), "path_b64": (str, False)},
    # a file that was in the work directory at the previous scan and is gone (sha256: its last content)
    "file.deleted": {"path": (str, True), "sha256": (str, True), "kind": (str, True), "agent": (str, False),
                     "tool": (str, False), "ambiguous": (bool, False), "candidates": (list, False),
                     "restored": (bool, False), "path_b64": (str, False)},
    # a remote runner's work-directory file, shipped back in chunks after each checkpoint and at the end (Ray;
    # the daemon keeps the bytes in its copy of the work directory and stores the event without ``data``;
    # ``deleted``: gone on the node since it was shipped; ``from_object``: no ``data``, the daemon copies ``length``
    # bytes at ``offset`` of the object ``sha256`` from the session's object store at home)
    "file.shipped": {"path": (str, True), "size": (int, True), "sha256": (str, True), "offset": (int, True),
                     "data": (str, False), "last": (bool, True), "bytes": (int, False), "error": (str, False),
                     "deleted": (bool, False), "path_b64": (str, False),
                     "from_object": (bool, False), "length": (int, False), "mode": (int, False)},
    # a remote runner's checkpoint object (manifest, result, file content, chunk or chunk index), shipped home in
    # chunks before the checkpoint that needs it (Ray): the daemon keeps the bytes in the session's object store and
    # stores the event without ``data``; ``name``: ``ab/<sha256>`` or ``ab/<sha256>.chunks``
    "checkpoint.object": {"name": (str, True), "size": (int, True), "offset": (int, True), "data": (str, False),
                          "last": (bool, True), "bytes": (int, False), "error": (str, False)},
    # approvals: requested by the runner, resolved by the daemon (a client's answer or the timeout policy)
    "approval.requested": {"approval_id": (str, True), "kind": (str, True), "prompt": (str, True),
                           "options": (list, True), "context": (ANY, False), "timeout": (NUM, False),
                           "policy": (str, False), "agent": (str, False)},
    "approval.resolved": {"approval_id": (str, True), "decision": (str, True), "feedback": (str, False),
                          "hypothesis": (str, False), "by": (str, True), "via": (str, True)},
    # labd replay (runner): an approval answered from the recorded session, and a request the record lacks
    "approval.replayed": {"kind": (str, True), "prompt": (str, True), "digest": (str, True),
                          "decision": (str, True), "feedback": (str, False), "hypothesis": (str, False)},
    "replay.miss": {"what": (str, True), "digest": (str, True), "input": (str, False), "agent": (str, False),
                    "expected": (dict, False)},
    # labd replay (runner): the first step whose name differs from the recorded node's (expected: that name)
    "replay.diverged": {"name": (str, True), "expected": (str, False)},
    # limits and resources (daemon)
    "limit.exceeded": {"limit": (str, True), "measured": (NUM, True), "max": (NUM, True),
                       "unit": (str, True), "action": (str, True)},
    "resource.sample": {"rss": (int, True), "cpu_percent": (NUM, True), "num_procs": (int, True),
                        "peak_rss": (int, True), "peak_cpu_percent": (NUM, True)},
    # an event that failed validation, kept so the history shows it (written by ingest in the
    # runner's src_seq slot, so the runner's sequence stays gap-free)
    "event.rejected": {"kind": (str, True), "reason": (str, True)},
    # an event too large to send, replaced by the runner with this marker
    "event.truncated": {"kind": (str, True), "size": (int, True)},
}
