"""The Landlock exec helper: ``python -I -S confine.py '<policy json>' -- program args...``.

Confines itself, checks what it asked for is in force, then ``exec``s the program (which inherits all
of it). It imports nothing from labd, only its two sibling files, so it starts in a few milliseconds
with ``-I -S`` (no site-packages, no user path). If any part of the policy cannot be applied it exits
with status 125 and says why on stderr: code never runs less confined than the daemon reported.

The policy is a JSON object, given inline or as the path of a file that is deleted once read:
``read`` (paths readable, see :func:`landlock.allowed_roots`) or ``hide`` (paths to keep unreadable, the
readable ones are then computed here), ``write`` (paths writable: the work directory and a private tmp),
``network`` (bool), ``tmp`` (the private TMPDIR).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any

EXIT_CONFINE_FAILED = 125
_CAP_LAST = 63
_HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_labd_sandbox_{name}", os.path.join(_HERE, f"{name}.py"))
    assert spec is not None and spec.loader is not None  # noqa: S101 - our own files
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def drop_capabilities() -> None:
    """As root: empty the bounding and ambient sets, so the program starts with no capability at all
    (root keeps CAP_DAC_OVERRIDE, CAP_SYS_PTRACE, ... otherwise). A no-op for other users."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(_CAP_LAST + 1):
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # PR_CAPBSET_DROP; EINVAL: past the last
            break
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL


def _status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def confine(policy: dict[str, Any]) -> list[str]:
    """Apply ``policy`` to this process; return what is enforced (raise on any failure)."""
    landlock = _sibling("landlock")
    network = bool(policy.get("network"))
    write = [str(p) for p in policy.get("write", [])]
    read = policy.get("read")
    if read is None:
        read = landlock.allowed_roots([str(p) for p in policy.get("hide", [])])
    drop_capabilities()
    rules = landlock.Ruleset(deny_tcp=not network, scope_signals=True, scope_abstract_unix=not network)
    for root in read:
        rules.allow(str(root), landlock.READ)
    for parent in landlock.listable_ancestors([str(p) for p in policy.get("hide", [])]):
        rules.allow(parent, landlock.READ_DIR)  # list, never read: imports from `~` keep working
    for path in write:
        if not rules.allow(path, rules.fs):
            raise OSError(f"writable path {path} does not exist")
    rules.allow("/dev/null", landlock.READ_FILE | landlock.WRITE_FILE | landlock.TRUNCATE)
    enforced = sorted(rules.enforced)
    if not network:
        seccomp = _sibling("seccomp")
        if seccomp.supported():
            seccomp.deny_network()
            enforced.append("seccomp")
    rules.restrict()
    # Read the state back: what the kernel reports, not what we believe we asked for.
    st = _status()
    if st.get("NoNewPrivs", "0").strip() != "1":
        raise OSError("no_new_privs is not set")
    if "seccomp" in enforced and st.get("Seccomp", "0").strip() != "2":
        raise OSError("the seccomp filter is not in force")
    if os.geteuid() == 0 and int(st.get("CapBnd", "0"), 16) != 0:
        raise OSError("capabilities could not be dropped")
    return enforced


def _load_policy(arg: str) -> dict[str, Any]:
    if arg.startswith("{"):
        return dict(json.loads(arg))
    with open(arg) as f:
        policy = json.load(f)
    os.unlink(arg)
    return dict(policy)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: confine.py POLICY_JSON -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    try:
        policy = _load_policy(argv[1])
        confine(policy)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the program must not run
        print(f"labd sandbox: cannot confine the command: {exc}", file=sys.stderr)
        return EXIT_CONFINE_FAILED
    if policy.get("tmp"):
        os.environ["TMPDIR"] = str(policy["tmp"])
    program = argv[3:]
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        print(f"labd sandbox: cannot run {program[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
