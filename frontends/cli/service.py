"""The daemon as a service: `labd wait` and `labd shutdown` (for scripts) and `labd service install|uninstall|status`
(systemd).

``labd serve --detach`` / ``--drain`` are options of ``serve`` (admin.py); the logic lives in
:mod:`labd.frontends.daemonctl` and :mod:`labd.frontends.service`.
"""

from __future__ import annotations

import argparse
import os

from labd.frontends import daemonctl, service
from labd.frontends.cli.base import Ctx, command, duration
from labd.ipc.client import LabdError

__all__ = ["register"]


def cmd_wait(args: argparse.Namespace, ctx: Ctx) -> int:
    if not args.sessions:
        return daemonctl.wait(ctx.home, 30.0 if args.timeout is None else args.timeout)
    from labd.frontends.cli.waits import wait_all

    return wait_all(ctx, args.sessions, None, args.timeout)


def cmd_shutdown(args: argparse.Namespace, ctx: Ctx) -> int:
    # a signal reaches only this machine's daemon: never stop the local one when a remote one was meant
    if getattr(args, "connect", None) or os.environ.get("LABD_CONNECTION_FILE"):
        raise LabdError("bad_request", "shutdown stops the daemon on this machine only; it does not take --connect "
                                       "(on the daemon's machine: `labd shutdown` or `systemctl --user stop labd`)")
    return daemonctl.shutdown(ctx.home, args.timeout)


def cmd_service(args: argparse.Namespace, ctx: Ctx) -> int:
    if getattr(args, "connect", None):
        raise LabdError("bad_request", "service manages labd's systemd unit on this machine: it takes no --connect")
    if args.service_cmd == "install":
        return service.install(ctx.home, drain=args.drain, watchdog_sec=args.watchdog, enable=args.enable,
                               replace=args.replace)
    if args.service_cmd == "uninstall":
        return service.uninstall()
    return service.status(ctx.home)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = command(sub, "wait", cmd_wait, "wait until the daemon answers (for scripts that just started one); with "
                "sessions, until each has ended", epilog="exit status with sessions: 0 if all completed, 1 otherwise "
                "(each one that did not on stderr), 2 on a timeout, 130 on Ctrl-C (they keep running)")
    s.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions (ids or names) to wait for")
    s.add_argument("--timeout", type=duration, default=None,
                   help="give up after this long: 30, 30s, 2m (default 30s for the daemon; none for sessions)")

    s = command(sub, "shutdown", cmd_shutdown,
                "stop the daemon (sessions keep running; the next `labd serve` adopts them)")
    s.add_argument("--timeout", type=duration, default=60.0,
                   help="wait this long for the daemon to exit: 60, 90s, 5m (default 60s; a --drain daemon waits for "
                   "its sessions)")

    s = command(sub, "service", cmd_service, "install, remove or inspect labd as a systemd user service")
    actions = s.add_subparsers(dest="service_cmd", required=True, metavar="ACTION")
    i = actions.add_parser("install", help=f"write ~/.config/systemd/user/{service.UNIT_NAME} for this interpreter")
    i.add_argument("--drain", action="store_true", help="stopping the service stops sessions gracefully first")
    i.add_argument("--watchdog", type=int, default=service.WATCHDOG_SEC, metavar="SEC",
                   help=f"WatchdogSec: restart a daemon that stops answering (default {service.WATCHDOG_SEC})")
    i.add_argument("--enable", action="store_true", help="also `systemctl --user enable --now labd`")
    i.add_argument("--replace", action="store_true", help="replace a unit that serves another home (one labd "
                   "service per user; refused without this)")
    actions.add_parser("uninstall", help="stop and disable the service, remove the unit (sessions keep running)")
    actions.add_parser("status", help="is the unit installed, current, enabled, running; is lingering on")
