"""The optional parts the daemon starts beside its core, each when its configuration asks for it: the TCP
(CurveZMQ) gateway for remote clients (``--listen``), the Ray launcher beside the template (``[launcher]``), the
OTLP exporter (``[telemetry]``). Each is imported only when configured (Ray and OpenTelemetry are heavy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from labd.daemon.config import Config
from labd.daemon.template_launcher import TemplateLauncher
from labd.ipc.connection import ConnectionInfo

__all__ = ["GatewayError", "launchers", "start_gateway", "start_telemetry"]


def start_telemetry(cfg: Config, engine: Any, home: Path) -> Any:
    """The OTLP exporter thread, when ``[telemetry] otlp_endpoint`` is set (None otherwise)."""
    tel = cfg.telemetry
    if not tel.get("otlp_endpoint"):
        return None
    from labd.daemon.otel_export import OtelExporter

    headers = {h: os.environ.get(var, "") for h, var in (tel.get("headers_env") or {}).items()}
    exporter = OtelExporter(engine, tel["otlp_endpoint"], home / "otel-export.db",
                            service_name=str(tel.get("service_name") or "labd"),
                            interval=float(tel.get("interval", 2.0)), headers=headers or None)
    exporter.start()
    return exporter


def launchers(cfg: Config, local: TemplateLauncher, env: dict[str, str], runners: str) -> Any:
    """The template launcher, with the Ray launcher beside it when ``[launcher]`` names a Ray cluster."""
    from labd.daemon.launch_routing import Launchers

    settings = cfg.launcher
    if settings.get("kind") != "ray" and not settings.get("address"):
        return Launchers(local)
    from labd.daemon.ray_launcher import RayLauncher  # only with Ray configured

    return Launchers(local, RayLauncher(cfg.home, runners, cfg.max_message, settings, env=env,
                                        session_nofile=cfg.session_nofile))


def start_gateway(cfg: Config, info: ConnectionInfo) -> Any:
    """The TCP (CurveZMQ) gateway when ``listen`` is set; raises if it cannot listen."""
    if not cfg.listen:
        return None
    from labd.daemon.gateway import Gateway

    gw = Gateway(cfg.home, cfg.listen, info, cfg.max_message)
    gw.start()
    gw.ready.wait(10)
    if gw.error is not None:
        raise GatewayError(f"cannot listen on {cfg.listen}: {gw.error}")
    return gw


class GatewayError(Exception):
    """``--listen`` could not be served (address in use, bad host)."""
