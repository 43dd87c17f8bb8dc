"""Remote clients: ``remote.add`` gives a named client a CurveZMQ keypair and a connection file for the TCP
gateway; ``remote.list`` shows the authorised clients; ``remote.remove`` revokes one (its key file goes, the
gateway's authenticator forgets it, and every remote connection is dropped: the others reconnect, it cannot)."""

from __future__ import annotations

import os
import re
from typing import Any

from labd.daemon.api.base import ApiError, Request, register
from labd.daemon.curve_keys import add_client, curve_dir
from labd.daemon.reads import Read

SETTLE_S = 5.0  # how long remote.remove waits for the remote connections' drop before it answers anyway

#: a remote client's name (``\Z``, not ``$``, which also matches before a final newline: "bob\n" was a name)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def _gateway(req: Request) -> Any:
    gw = getattr(req.daemon, "gateway", None)
    if gw is None:
        raise ApiError("no_tcp", "this daemon does not listen on TCP: start it with --listen tcp://HOST:PORT")
    return gw


@register
class AddRemote(Request):
    type = "remote.add"

    def execute(self) -> Any:
        gw = _gateway(self)
        name = self.arg("name", str, check=lambda n: NAME.match(n) is not None,
                        hint="1-64 letters, digits, '.', '_' or '-'")
        host = self.arg("host", str, gw.host if gw.host not in ("0.0.0.0", "*", "::") else "127.0.0.1",
                        check=lambda h: 0 < len(h) <= 255 and "/" not in h, hint="a host name or address")
        if (curve_dir(self.daemon.layout.home) / "clients" / f"{name}.key").exists():
            raise ApiError("exists", f"a remote client named {name!r} exists; remove it first")
        public, secret = add_client(self.daemon.layout.home, name)
        gw.reload_clients()
        return {"name": name, "connection": {
            "control": f"tcp://{host}:{gw.port}", "events": f"tcp://{host}:{gw.port + 1}", "runners": "",
            "key": self.daemon.info.key, "pid": os.getpid(), "home": str(self.daemon.layout.home),
            "server_public": gw.public.decode(), "client_public": public.decode(), "client_secret": secret.decode(),
            "max_message": self.daemon.cfg.max_message}}


@register
class ListRemotes(Request):
    type = "remote.list"

    def execute(self) -> Any:
        d = curve_dir(self.daemon.layout.home) / "clients"
        names = sorted(p.stem for p in d.glob("*.key")) if d.is_dir() else []
        gw = getattr(self.daemon, "gateway", None)
        return {"listen": list(gw.endpoints) if gw else None, "clients": names}


@register
class RemoveRemote(Request):
    type = "remote.remove"

    def execute(self) -> Any:
        gw = _gateway(self)
        name = self.arg("name", str, check=lambda n: NAME.match(n) is not None, hint="a remote client's name")
        path = curve_dir(self.daemon.layout.home) / "clients" / f"{name}.key"
        if not path.exists():
            raise ApiError("not_found", f"no remote client named {name!r}")
        path.unlink()
        gw.revoke()  # its open connections too, not only new ones
        # answered once they are dropped and the ports listen again, on a read worker (the gateway's thread does it
        # within a pass; a port the kernel has not let go yet takes longer)
        settled = yield Read(lambda: gw.rebind.settled(SETTLE_S), "the remote connections' drop")
        return {"name": name, "removed": True, "reconnectable": settled}
