"""What a Ray session asks of the cluster: the ``placement`` field of ``session.start`` checked
(:func:`placement_from`) and the actor's Ray resource request built from the spec (:func:`ray_options`)."""

from __future__ import annotations

from typing import Any

__all__ = ["PlacementError", "placement_from", "ray_options"]


class PlacementError(ValueError):
    """A ``placement`` request field labd cannot honour."""


def placement_from(body: dict[str, Any], default_kind: str) -> dict[str, Any] | None:
    """The ``placement`` field of ``session.start`` checked: ``{"on": "ray"|"local", "gpus", "resources"}``;
    None for a local session. ``on`` defaults to the configured launcher kind."""
    raw = body.get("placement")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PlacementError("placement must be an object {on, gpus, resources}")
    unknown = set(raw) - {"on", "gpus", "resources"}
    if unknown:
        raise PlacementError(f"unknown placement fields {sorted(unknown)} (known: on, gpus, resources)")
    on = raw.get("on") or ("ray" if default_kind == "ray" else "local")
    if on not in ("ray", "local"):
        raise PlacementError(f"placement.on must be ray or local, not {on!r}")
    gpus, resources = raw.get("gpus"), raw.get("resources") or {}
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int | float) or not 0 <= gpus <= 1024):
        raise PlacementError("placement.gpus must be a number of GPUs (0-1024)")
    if not isinstance(resources, dict) or len(resources) > 32 or not all(
            isinstance(k, str) and 0 < len(k) <= 100 and isinstance(v, int | float) and not isinstance(v, bool)
            and 0 <= v <= 1e9 for k, v in resources.items()):
        raise PlacementError("placement.resources must map up to 32 resource names to amounts")
    if on == "local":
        if gpus or resources:
            raise PlacementError("gpus and resources are Ray resource requests: use them with on = ray")
        return None
    return {"on": "ray", "gpus": gpus, "resources": resources}


def ray_options(spec: dict[str, Any]) -> dict[str, Any]:
    """The actor's Ray resource request: ``--cpus`` (1 by default), ``--gpus``, ``--memory``, custom resources."""
    limits, placement = spec.get("limits") or {}, spec.get("placement") or {}
    cpu = limits.get("cpu")
    opts: dict[str, Any] = {"num_cpus": round(cpu / 100.0, 2) if cpu else 1}
    if placement.get("gpus"):
        opts["num_gpus"] = placement["gpus"]
    if limits.get("memory"):
        opts["memory"] = int(limits["memory"])
    if placement.get("resources"):
        opts["resources"] = dict(placement["resources"])
    return opts
