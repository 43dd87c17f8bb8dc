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

from labd.runner.session import EXIT_FAILED, run_session


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the workflow reads nothing from the actor's pipe
    os.close(devnull)
    code = EXIT_FAILED
    try:
        code = run_session(spec)
    except BaseException:  # noqa: BLE001 - last resort: on the real stderr (the actor's log), then exit
        traceback.print_exc(file=sys.__stderr__)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
