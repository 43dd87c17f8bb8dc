"""How the daemon confines sessions: the probe at start of what confinement works here (bubblewrap, Landlock, none;
docs/security.md), and the confinement each runner is given in its spec. A mixin of
:class:`labd.daemon.server.Daemon`."""

from __future__ import annotations

import os
from typing import Any

from labd.daemon import homes
from labd.daemon.cgroups import SessionCgroups
from labd.daemon.config import Config
from labd.ipc.paths import Layout
from labd.runner.sandbox import SandboxStatus, hidden_paths, probe
from labd.runner.sandbox import landlock as _landlock

__all__ = ["SandboxSetup"]


class SandboxSetup:
    """The daemon's sandbox settings, probed once (:meth:`_probe_sandbox`), then handed to each runner."""

    # provided by Daemon
    cfg: Config
    layout: Layout
    log: Any
    sandbox: SandboxStatus
    sandbox_hide: list[str]
    runner_confinement: str
    cgroups: SessionCgroups

    def _probe_sandbox(self) -> None:
        """Find out, by running a confined probe, how code that agents execute can be confined; say so in
        the log when it is less than full (never silently less). See docs/security.md."""
        sb, layout = self.cfg.sandbox, self.layout
        db_path = self.cfg.db_url.split("sqlite:///", 1)[1] if self.cfg.db_url.startswith("sqlite:///") else None
        self.sandbox_hide = hidden_paths(layout.home, layout.runtime_dir, sb.hide, db_path)
        try:  # so that every other daemon of this user hides this home from its sessions (daemon/homes.py)
            homes.register(layout.home)
        except OSError as exc:
            self.log.warning("could not add this home to the registry of labd homes: other daemons' sessions are not "
                             "kept out of it", registry=str(homes.registry_path()), error=str(exc))
        self.sandbox: SandboxStatus = probe(sb.mechanism, self.sandbox_hide, layout.home / "tmp", sb.require)
        #: the runner's own Landlock (labd.runner.credentials); bwrap cannot run under it
        if not sb.confine_runner:
            self.runner_confinement = "off: [sandbox] confine_runner = false"
        elif _landlock.abi_version() < 1:
            self.runner_confinement = "off: no Landlock in this kernel"
        elif self.sandbox.mechanism == "bwrap":
            self.runner_confinement = "off: bwrap cannot start under a Landlock-confined runner"
        else:
            self.runner_confinement = "landlock"
        info = {"level": self.sandbox.level, "mechanism": self.sandbox.mechanism, "reasons": self.sandbox.reasons,
                "runner": self.runner_confinement}
        if self.sandbox.level == "full":
            self.log.info("sandbox for executed code", **info)
        elif sb.require and self.sandbox.level == "none":
            self.log.error("no sandbox works here and [sandbox] require = true: code execution is refused", **info)
        else:
            self.log.warning("executed code is not fully confined", **info)
        if os.geteuid() == 0:  # never silently: a root runner keeps root's capabilities (docs/security.md)
            self.log.warning("the daemon runs as root, and so do its sessions' runners: workflow code keeps root's "
                             "capabilities and can write /proc/sys (only code the agents execute drops them); run "
                             "labd as a user (docs/security.md)")

    def sandbox_spec(self, sid: str, network: bool) -> dict[str, Any]:
        """What a runner needs to confine its session's executed code, and itself (part of its spec)."""
        return {"level": self.sandbox.level, "mechanism": self.sandbox.mechanism, "reasons": self.sandbox.reasons,
                "require": self.sandbox.require, "hide": [*self.sandbox_hide, *homes.others(self.layout.home)],
                "network": network}

    def runner_confine_spec(self, sid: str | None) -> dict[str, Any] | None:
        """The Landlock policy of session ``sid``'s runner (None: no Landlock); with ``sid`` None, of a workflow
        check (runner/checks.py), which may see no session's directory."""
        if self.runner_confinement != "landlock":
            return None
        # /sys and every cgroup file system (the sessions' groups' and all others): readable, not writable. A
        # session that could write there could leave its group, or, as root, have the kernel run a program of its
        # own unconfined (a v1 hierarchy's release_agent: daemon/cgroups.py, SessionCgroups.mounts), or change the
        # machine's settings. (/proc/sys cannot be made read-only this way: docs/security.md.)
        read = ["/sys", *(m for m in self.cgroups.mounts if m != "/sys" and not m.startswith("/sys/"))]  # one rule
        # every other labd home of this user too: its key would open its daemon's control socket (daemon/homes.py);
        # and the registry that lists them: a runner that rewrote it had the other homes' keys open to the next
        # session (an attack review)
        hide = [str(self.layout.home), str(self.layout.runtime_dir.parent), *homes.others(self.layout.home),
                str(homes.registry_path())]
        return {"hide": [*hide, *read],
                "allow": [str(self.layout.sessions_dir / sid)] if sid else [], "read": read}

    def template_hints(self) -> dict[str, Any]:
        """The parts every local runner's spec shares (sandbox and Landlock hide lists, where session directories
        are, the next runner's cgroup), for the runner template's first spare to prepare for
        (daemon/template_launcher.py, TemplateLauncher.hints): without them the first session after a start walked
        the file system for its Landlock rules and moved between cgroups on its start's path (~3x the later
        sessions' start)."""
        spec: dict[str, Any] = {"sandbox": self.sandbox_spec("", False),
                                # a session's work directory is <sessions>/<id>/work: its spool goes in <sessions>/<id>
                                "workdir": str(self.layout.sessions_dir / "next" / "work")}
        confine = self.runner_confine_spec(None)
        if confine:
            spec["confine"] = confine
        ahead = self.cgroups.prime()
        if ahead:
            spec["cgroup_next"] = ahead
        return spec
