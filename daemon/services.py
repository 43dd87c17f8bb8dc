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
from labd.runner.secret_env import OTEL_HEADER_VARS

__all__ = ["GatewayError", "launchers", "otel_env_headers", "start_gateway", "start_telemetry"]


def start_telemetry(cfg: Config, engine: Any, home: Path) -> Any:
    """The OTLP exporter thread, when ``[telemetry] otlp_endpoint`` is set (None otherwise)."""
    tel = cfg.telemetry
    if not tel.get("otlp_endpoint"):
        return None
    import sqlite3

    import structlog

    from labd.daemon.otel_export import OtelExporter
    from labd.daemon.otel_http import TlsFiles, parse_compression, parse_timeout

    def otel(name: str) -> str | None:  # OpenTelemetry's own settings, as its SDK's exporter read them: traces' first
        return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")

    # headers from OpenTelemetry's variables, under those named in headers_env; a custom CA and a client certificate
    # (mTLS) for an https endpoint; gzip bodies; how long one request may take
    headers = otel_env_headers(os.environ)
    headers.update({h: os.environ.get(var, "") for h, var in (tel.get("headers_env") or {}).items()})
    tls = TlsFiles(*(otel(name) for name in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY")))
    try:
        exporter = OtelExporter(engine, tel["otlp_endpoint"], home / "otel-export.db",
                                service_name=str(tel.get("service_name") or "labd"),
                                interval=float(tel.get("interval", 2.0)), headers=headers or None, tls=tls,
                                gzip=parse_compression(otel("COMPRESSION")), timeout=parse_timeout(otel("TIMEOUT")))
    except (ValueError, OSError, sqlite3.Error) as exc:  # the daemon serves on, without export, and says why
        structlog.get_logger("labd.otel").error("telemetry export is off: it cannot start", error=str(exc)[:300])
        return None
    exporter.start()
    return exporter


def otel_env_headers(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The headers OpenTelemetry's variables give (``k1=v1,k2=v2``, values URL-encoded; the traces' one wins)."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for var in OTEL_HEADER_VARS:
        for item in (env.get(var) or "").split(","):
            name, eq, value = item.partition("=")
            if eq and name.strip():
                out[unquote(name.strip())] = unquote(value.strip())
    return out


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
