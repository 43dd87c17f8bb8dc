"""Which launcher runs a session: the template launcher (local), or the Ray launcher when one is configured
(``[launcher] kind = "ray"``) and the session's spec asks for it (``placement.on``, ``labd run --on ray|local``).

:class:`Launchers` is what the daemon holds behind the launcher seam (:class:`labd.daemon.launcher.Launcher`); a Ray
session's handle is negative (never a local pid), which is how the supervisor and the monitor tell the two apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from labd.daemon.launcher import ExitInfo, LaunchError

if TYPE_CHECKING:
    from labd.daemon.ray_launcher import RayLauncher
    from labd.daemon.template_launcher import TemplateLauncher

__all__ = ["Launchers", "NO_RAY"]

#: why a session asked to run on Ray cannot (refused at session.start; a launch says it too, e.g. after a restart
#: with another configuration)
NO_RAY = 'this daemon has no Ray launcher: set [launcher] kind = "ray" and address in its config, then restart it'


class Launchers:
    """The daemon's launcher: the template launcher, plus the Ray launcher when one is configured; each session
    goes to the one its spec names (``placement.on``). Ray sessions have negative handles."""

    def __init__(self, local: TemplateLauncher, ray: RayLauncher | None = None) -> None:
        self.local, self.ray = local, ray

    @property
    def template_pid(self) -> int | None:
        return self.local.template_pid

    @property
    def clone_filter(self) -> str | None:
        return self.local.clone_filter

    def template_children(self) -> tuple[int | None, frozenset[int], float]:
        return self.local.template_children()

    def start(self) -> None:
        self.local.start()
        if self.ray is not None:
            self.ray.start()

    def fileno(self) -> int | None:
        return self.local.fileno()

    def is_remote(self, pid: int) -> bool:
        """Whether ``pid`` is a remote launcher's handle (not a local process: not for the local monitor)."""
        return pid < 0

    def kind_of(self, pid: int) -> str:
        return "ray" if pid < 0 else "template"

    def ray_health(self) -> dict[str, Any] | None:
        """The Ray launcher's state (``daemon.status`` ``ray``), or None without one."""
        return self.ray.health() if self.ray is not None else None

    def clean_nodes(self, placed: list[tuple[str, str, str]]) -> None:
        """Deleted sessions' directories on the Ray nodes they ran on (``(session, node, work dir)``): removed by the
        Ray launcher; without one (the configuration changed since) they stay, and the log says so."""
        if self.ray is not None:
            self.ray.clean_nodes(placed)
        elif placed:
            structlog.get_logger("labd.ray").warning(
                "deleted sessions ran on Ray nodes, but this daemon has no Ray launcher: their directories there are "
                "not removed", sessions=sorted({p[0] for p in placed})[:20])

    def adopt_remote(self, sid: str, unrecorded: bool = False) -> int | None:
        """A session with no local runner: adopt its Ray actor if there is one (see :meth:`RayLauncher.adopt`);
        None when this daemon has no Ray launcher."""
        return self.ray.adopt(sid, unrecorded) if self.ray is not None else None

    def launch(self, spec: dict[str, Any]) -> tuple[int, float]:
        if (spec.get("placement") or {}).get("on") == "ray":
            if self.ray is None:
                raise LaunchError(NO_RAY)
            return self.ray.launch(spec)
        return self.local.launch(spec)

    def inspect_start(self, workflow: str, params: dict[str, Any], path: list[str] | None = None,
                      confine: dict[str, Any] | None = None) -> int:
        return self.local.inspect_start(workflow, params, path, confine)

    def renew_spares(self) -> None:
        """The local launcher's spare runner and checker renewed (:meth:`TemplateLauncher.renew_spares`)."""
        self.local.renew_spares()

    def drain_inspected(self) -> list[tuple[int, dict[str, Any]]]:
        return self.local.drain_inspected()

    def drain_exits(self) -> list[ExitInfo]:
        exits = self.local.drain_exits()
        return exits + self.ray.drain_exits() if self.ray is not None else exits

    def drain_notes(self) -> list[tuple[Any, ...]]:
        return self.ray.drain_notes() if self.ray is not None else []

    def signal(self, pid: int, sig: int) -> bool:
        if pid < 0:
            return self.ray.signal(pid, sig) if self.ray is not None else False
        return self.local.signal(pid, sig)

    def shutdown(self) -> None:
        self.local.shutdown()
        if self.ray is not None:
            self.ray.shutdown()
