"""Confinement of the code agents execute (``run_code`` and everything it starts).

One small interface, :class:`Sandbox` (``wrap(argv, workdir, network) -> argv``), over two mechanisms,
each in its own module: :mod:`.bwrap` (namespaces, from the OS package) and :mod:`.landlock` (+
:mod:`.seccomp`, through the :mod:`.confine` exec helper). The daemon :func:`probe`\\ s them at start by
really running a confined command, keeps the result (``level``: ``full`` | ``partial`` | ``none``, with
``reasons``), shows it in ``labd status`` and hands it to every runner in its spec; the runner builds its
:class:`Sandbox` from that (:meth:`Sandbox.from_spec`), without probing again.

What executed code may do (see docs/security.md): read the filesystem except the ``hide`` paths (labd's
home, its runtime directory, credential dotfiles); write only its work directory and a private tmp; no
network unless the session asked for it; no access to other processes' ``/proc`` entries or signals.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labd.runner.sandbox import bwrap as _bwrap
from labd.runner.sandbox import landlock as _landlock
from labd.runner.sandbox import seccomp as _seccomp

__all__ = ["Sandbox", "SandboxStatus", "SandboxRefused", "probe", "hidden_paths", "CREDENTIAL_DOTFILES",
           "MECHANISMS", "CONFINE", "install", "session_sandbox"]

MECHANISMS = ("auto", "bwrap", "landlock", "none")
CONFINE = str(Path(__file__).with_name("confine.py"))
#: files and directories under $HOME that hold credentials: never readable by executed code
CREDENTIAL_DOTFILES = (".ssh", ".aws", ".config/labd", ".gnupg", ".netrc", ".docker", ".kube", ".azure",
                       ".config/gcloud", ".git-credentials", ".pgpass", ".pypirc", ".npmrc", ".password-store",
                       ".local/share/keyrings", ".config/gh", ".terraform.d", ".vault-token")
PROBE_TIMEOUT_S = 20.0


class SandboxRefused(Exception):
    """Code must not run: the configuration requires a sandbox and none is available."""


@dataclass(frozen=True)
class SandboxStatus:
    """What the daemon found at start: the mechanism in use and how much of the policy it enforces."""

    level: str  # full | partial | none
    mechanism: str  # bwrap | landlock | none
    reasons: list[str] = field(default_factory=list)  # why not full (empty when full)
    require: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hidden_paths(home: Path, runtime_dir: Path, extra: list[str] | None = None,
                 db_path: str | None = None) -> list[str]:
    """What executed code must not read: labd's home (key, database, other sessions), the runtime
    directory of every labd daemon of this user (sockets, connection files), the user's whole runtime directory
    (``$XDG_RUNTIME_DIR``: the systemd user bus, from which ``systemd-run --user`` starts anything unconfined;
    bubblewrap mounts over it, so its sockets cannot be reached either), credential dotfiles."""
    user_home = Path(os.path.expanduser("~"))
    runtime = str(runtime_dir.parent)
    xdg = os.path.normpath(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent")
    if os.path.isabs(xdg) and os.path.isdir(xdg) and not f"{home}/".startswith(f"{xdg}/"):
        # the whole of it, in place of labd's part of it (one mount over it for bubblewrap, not one inside another)
        runtime = xdg if f"{runtime}/".startswith(f"{xdg}/") else runtime
        paths = [str(home), runtime] + ([xdg] if runtime != xdg else [])
    else:
        paths = [str(home), runtime]
    paths += [str(user_home / p) for p in CREDENTIAL_DOTFILES]
    if db_path:
        paths.append(db_path)
    paths += [os.path.expanduser(p) for p in (extra or [])]
    return paths


class Sandbox:
    """Wraps commands of one session so they run confined. Built by the runner from its spec."""

    def __init__(self, status: SandboxStatus, hide: list[str], network: bool, session_dir: str | None = None) -> None:
        self.status = status
        self.hide = hide
        self.network = network
        self.session_dir = session_dir
        self._bwrap = _bwrap.find() if status.mechanism == "bwrap" else None
        # Computed now, while the whole filesystem can still be listed: once the runner confines itself
        # (labd.runner.credentials), directories on the way to labd's home can no longer be read.
        self._read_roots = _landlock.allowed_roots(hide) if status.mechanism == "landlock" else []

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, session_dir: str | None = None) -> Sandbox:
        """The sandbox a runner spec describes (``spec["sandbox"]``); no spec means no sandbox."""
        spec = spec or {}
        status = SandboxStatus(level=str(spec.get("level", "none")), mechanism=str(spec.get("mechanism", "none")),
                               reasons=list(spec.get("reasons", ["the daemon sent no sandbox settings"])),
                               require=bool(spec.get("require", False)))
        return cls(status, [str(p) for p in spec.get("hide", [])], bool(spec.get("network", False)), session_dir)

    def tmpdir(self, workdir: str) -> str:
        """The private tmp of Landlock-confined commands (bwrap mounts a fresh /tmp instead)."""
        base = self.session_dir or os.path.dirname(os.path.realpath(workdir))
        path = os.path.join(base, "exec-tmp")  # not the runner's own tmp: code may not plant files there
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _policy_file(self, workdir: str, policy: dict[str, Any]) -> str:
        """Write the policy where executed code cannot change it (the session directory, outside the work
        directory and tmp); the exec helper reads and deletes it. A file, because the list of readable
        paths can outgrow a command-line argument."""
        base = self.session_dir or os.path.dirname(os.path.realpath(workdir))
        fd, path = tempfile.mkstemp(prefix=".sandbox-", suffix=".json", dir=base)
        with os.fdopen(fd, "w") as f:
            json.dump(policy, f)
        return path

    def wrap(self, argv: list[str], workdir: str, network: bool | None = None) -> list[str]:
        """``argv`` confined to ``workdir``; raise :class:`SandboxRefused` when code must not run."""
        net = self.network if network is None else network
        mech = self.status.mechanism
        if mech == "bwrap" and self._bwrap:
            return _bwrap.wrap(self._bwrap, argv, workdir, self.hide, net)
        if mech == "landlock":
            policy = {"read": self._read_roots, "write": [os.path.realpath(workdir), self.tmpdir(workdir)],
                      "network": net, "tmp": self.tmpdir(workdir)}
            return [sys.executable, "-I", "-S", CONFINE, self._policy_file(workdir, policy), "--", *argv]
        if self.status.require:
            raise SandboxRefused("this daemon requires a sandbox ([sandbox] require = true) and none is available: "
                                 + "; ".join(self.status.reasons))
        return list(argv)


_session: Sandbox | None = None


def install(sandbox: Sandbox) -> None:
    """Make ``sandbox`` the one this runner process uses (a runner runs exactly one session)."""
    global _session
    _session = sandbox


def session_sandbox() -> Sandbox:
    """This runner's sandbox; without one installed (a runner started without a daemon spec), none."""
    return _session if _session is not None else Sandbox.from_spec(None)


# ---- probing (daemon side) --------------------------------------------------------------------------

_PROBE_CODE = r"""
import json, os, socket, sys
secret, outside, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = {}
def attempt(name, fn):
    try:
        fn(); res[name] = "allowed"
    except OSError as exc:
        res[name] = "denied"
attempt("read_hidden", lambda: open(secret).read())
attempt("write_work", lambda: open("probe-ok", "w").write("x"))
attempt("write_outside", lambda: open(outside, "w").write("x"))
def net():
    s = socket.socket(); s.settimeout(3); s.connect(("127.0.0.1", port)); s.close()
attempt("network", net)
with open("/proc/self/status") as f:
    st = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
res["cap_eff"] = int(st.get("CapEff", "0"), 16)
print(json.dumps(res))
"""


#: Runners run with no-new-privs (the clone filter sets it, runner/process_setup.keep_in_tree, on the architectures it
#: knows), so the probe does too, through this exec helper: a setuid bwrap (no unprivileged user namespaces)
#: gains nothing under it and fails, in a runner as in the probe, so the level the probe reports is the runners'.
_NO_NEW_PRIVS = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def as_runners(argv: list[str]) -> list[str]:
    """``argv`` run as under a runner: with no-new-privs where the runner template's clone filter sets it (should
    installing it fail on such an architecture, runners lack it and the probe errs low: never a level too high)."""
    if not _seccomp.supported():  # no filter (runner/process_setup.keep_in_tree): runners keep what they had
        return argv
    return [sys.executable, "-I", "-S", "-c", _NO_NEW_PRIVS, *argv]


def _run_probe(sb: Sandbox, scratch: Path) -> tuple[bool, str]:
    """Run the probe program confined by ``sb``; (works, why not)."""
    work = scratch / "work"
    secret_dir = scratch / "secret"
    work.mkdir(parents=True, exist_ok=True)
    secret_dir.mkdir(exist_ok=True)
    (secret_dir / "canary").write_text("secret")
    outside = scratch / "outside"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        sb = Sandbox(sb.status, [*sb.hide, str(secret_dir)], network=False, session_dir=str(scratch))
        argv = sb.wrap([sys.executable, "-I", "-S", "-c", _PROBE_CODE, str(secret_dir / "canary"), str(outside),
                        str(listener.getsockname()[1])], str(work))
        proc = subprocess.run(as_runners(argv), cwd=work, capture_output=True, timeout=PROBE_TIMEOUT_S,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        listener.close()
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {err[-1] if err else 'no message'}"
    try:
        res = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, "the probe printed no result"
    # A write outside may "succeed" into a private tmpfs: what counts is whether it reached the real file.
    res["write_outside"] = "allowed" if outside.exists() else "denied"
    res["write_work"] = "allowed" if (work / "probe-ok").exists() else "denied"
    expected = {"read_hidden": "denied", "write_work": "allowed", "write_outside": "denied", "network": "denied"}
    wrong = [k for k, v in expected.items() if res.get(k) != v]
    if wrong:
        return False, f"probe not confined as expected: {', '.join(f'{k}={res.get(k)}' for k in wrong)}"
    if res.get("cap_eff"):
        return False, "the confined process kept capabilities"
    return True, ""


def _probe_bwrap(hide: list[str], scratch: Path) -> tuple[SandboxStatus | None, str]:
    if _bwrap.find() is None:
        return None, "bwrap: not installed (Debian/Ubuntu package bubblewrap)"
    ok, why = _run_probe(Sandbox(SandboxStatus("full", "bwrap"), hide, False), scratch / "bwrap")
    if not ok:
        return None, f"bwrap: does not work here ({why}); unprivileged user namespaces may be disabled"
    return SandboxStatus("full", "bwrap"), ""


def _probe_landlock(hide: list[str], scratch: Path) -> tuple[SandboxStatus | None, str]:
    abi = _landlock.abi_version()
    if abi < 1:
        return None, "landlock: not available in this kernel (needs Linux >= 5.13 with landlock in the LSM list)"
    ok, why = _run_probe(Sandbox(SandboxStatus("partial", "landlock"), hide, False), scratch / "landlock")
    if not ok:
        return None, f"landlock: does not work here ({why})"
    reasons = []
    if not _seccomp.supported():
        reasons.append("landlock: no seccomp filter for this architecture: "
                       + ("only TCP is blocked" if abi >= 4 else "network is not blocked"))
    if abi < 6:
        reasons.append(f"landlock ABI {abi} < 6: executed code can signal other processes of this user")
    reasons.append("landlock: no PID namespace: executed code that calls setsid leaves the session's process group")
    level = "full" if abi >= 6 and _seccomp.supported() else "partial"
    return SandboxStatus(level, "landlock", reasons), ""


def probe(mechanism: str, hide: list[str], scratch_dir: Path, require: bool = False) -> SandboxStatus:
    """Find the mechanism to use (``auto``: Landlock, else bwrap) by running a confined probe program."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown sandbox mechanism {mechanism!r}")
    if mechanism == "none":
        return SandboxStatus("none", "none", ["disabled by configuration ([sandbox] mechanism = \"none\")"], require)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    reasons: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-", dir=scratch_dir) as tmp:
        # Landlock first: a runner confined by Landlock (labd.runner.credentials) cannot start bwrap (a
        # Landlock domain may not change mounts), and confining the runner protects the daemon's key.
        for name, fn in (("landlock", _probe_landlock), ("bwrap", _probe_bwrap)):
            if mechanism not in ("auto", name):
                continue
            status, why = fn(hide, Path(tmp))
            if status is not None:
                return SandboxStatus(status.level, status.mechanism, status.reasons, require)
            reasons.append(why)
    return SandboxStatus("none", "none", reasons, require)
