"""Which environment variables are secrets: withheld from a session's environment (and from the runner template's,
which every runner inherits), and given to the runner in its spec instead (docs/security.md).

A module of its own, without imports of the runner stack: ``labd serve`` splits its environment before it spawns
the runner template, which it does before it imports the daemon's own modules (daemon/startup.py).
"""

from __future__ import annotations

import re

__all__ = ["SECRET_PATTERN", "SECRET_VALUE", "PROXY_NAME", "WITHHELD", "PG_WITHHELD", "OTEL_HEADER_VARS",
           "split_secrets", "store_withheld"]

#: environment variables that look like credentials are withheld from the workflow's environment
SECRET_PATTERN = re.compile(
    r"(^|_)(API_?KEY|APIKEY|SECRET|SECRET_KEY|SECRET_ACCESS_KEY|ACCESS_KEY|PRIVATE_KEY|PASSWORD|PASSWD|"
    r"CREDENTIALS?|CREDS|AUTH|AUTHORIZATION|BEARER|PASSPHRASE|SECRETS|COOKIES?|DSN)(_|$)|(API_?KEY|TOKEN|SECRET|PASSWORD|PASSPHRASE|_KEY|_PAT|"
    r"_PASS|_PWD)$", re.IGNORECASE)  # _PWD, not PWD: the shell's working directory (OLDPWD too) is no secret
#: ... and so do values that carry a password in a URL (``DATABASE_URL=postgres://user:pw@host/db``), anywhere in
#: the value, whatever the name, except proxy settings (``HTTPS_PROXY=http://user:pw@proxy:3128``), which the
#: model clients in the session need to reach their API at all
SECRET_VALUE = re.compile(r"(?:^|\s)[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
PROXY_NAME = re.compile(r"(^|_)PROXY$", re.IGNORECASE)

#: never passed to sessions, neither in their environment nor among their secrets: the store's URL may hold its
#: password, and a runner that could write the store could rewrite every session's record
WITHHELD = ("LABD_DB",)
#: ... nor, when the store is PostgreSQL, the libpq settings that may log in to it
PG_WITHHELD = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSSLKEY", "PGSSLPASSWORD")
#: ... nor, when the daemon exports to an OTLP collector, OpenTelemetry's variables for that collector's headers (its
#: API key), which the exporter reads (daemon/services.py)
OTEL_HEADER_VARS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")


def split_secrets(env: dict[str, str], extra_names: list[str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``env`` into (clean environment, secrets) by name pattern and an explicit list. :data:`WITHHELD` is in
    neither: it is the daemon's alone."""
    names = set(extra_names or [])
    secrets = {k: v for k, v in env.items() if k in names or SECRET_PATTERN.search(k)
               or (SECRET_VALUE.search(v) and not PROXY_NAME.search(k))}
    clean = {k: v for k, v in env.items() if k not in secrets and k not in WITHHELD}
    return clean, {k: v for k, v in secrets.items() if k not in WITHHELD}


def store_withheld(secrets: dict[str, str], db_passwords: set[str], postgres: bool) -> dict[str, str]:
    """``secrets`` without what logs in to the store: with a PostgreSQL store the libpq settings
    (:data:`PG_WITHHELD`), and any value that holds the store's password (``db_passwords``: as its URL has it and
    decoded; e.g. a ``DATABASE_URL`` naming the same server). Sessions get the rest (docs/security.md)."""
    return {k: v for k, v in secrets.items()
            if not (postgres and k in PG_WITHHELD) and not any(p in v for p in db_passwords if p)}
