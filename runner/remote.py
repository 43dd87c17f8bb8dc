"""``python -m labd.runner.remote``: a runner started by a Ray actor (labd.runner.ray_actor).

The start spec arrives as one JSON document on stdin (never on the command line or in the environment, where
other users of the node could read its keys). Everything after that is the ordinary runner:
:func:`labd.runner.session.run_session`.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from labd.runner.process_setup import keep_in_tree, limit_files
from labd.runner.session import EXIT_FAILED, own_crash_channel, run_session


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the workflow reads nothing from the actor's pipe
    os.close(devnull)
    # As a local runner: fd 2 is the session's crash file (its actor hands the tail back when the runner ends
    # without an outcome: session.ended's runner_stderr), and the sessions' descriptor limit holds on the node too.
    own_crash_channel(spec)
    limit_files(int(spec.get("session_nofile") or 0))
    clone_filter = keep_in_tree()  # no child outside this runner's tree (runner/process_setup.py); before any thread
    if clone_filter != "on":
        print(f"labd runner: the clone filter is not in force: {clone_filter}", file=sys.stderr, flush=True)
    code = EXIT_FAILED
    try:
        code = run_session(spec)
    except BaseException:  # noqa: BLE001 - last resort: into the crash file, then exit
        traceback.print_exc(file=sys.__stderr__)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__mp_main__":  # a process multiprocessing spawned from this runner: the session's ctx, as a local
    from labd.runner.spawned import attach  # runner's (whose main module, labd.runner.template, does the same)

    attach()

if __name__ == "__main__":
    main()
