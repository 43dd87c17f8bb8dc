"""A store's URL as it may be shown: in logs, in ``labd status``, in messages and in the home's record of its store.

No user, no password, and no credential given as a query parameter (``?password=``, which the PostgreSQL drivers
take as the password too: ``labd serve --check`` printed it, ``daemon.status`` sent it, ``<home>/store`` recorded it;
attack review), nor one in a database name that libpq reads as a connection string or URI of its own (``dbname``
holding ``host=h password=p``: libpq expands it, and uses that password): the rest of it is shown.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlencode, urlsplit

__all__ = ["shown_url", "url_passwords"]

#: query parameters of a store URL that are credentials (libpq's and its drivers'): never shown nor recorded
_SECRET_PARAMS = ("password", "secret", "token", "passfile", "sslkey")


#: one ``key = value`` of a libpq connection string, the value bare or single-quoted (backslash escapes)
_CONNINFO_PAIR = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:\\.|[^\s\\])+)")


def _secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_PARAMS)


def _expanded(dbname: str) -> bool:
    """Whether libpq reads a database name as a connection string or URI of its own (which may hold a password)."""
    return "=" in dbname or "://" in dbname


def _public_dbname(dbname: str) -> str:
    """A database name libpq expands, without its credentials (a URI's as :func:`shown_url`; a connection string's
    ``password`` and the like left out); any other name as it is."""
    if not _expanded(dbname):
        return dbname
    if "://" in dbname:
        return shown_url(dbname)
    kept = [f"{k}={v}" for k, v in _CONNINFO_PAIR.findall(dbname) if not _secret(k)]
    return " ".join(kept)


def _public_query(query: str) -> str:
    """``query`` without its credential parameters, nor those of a ``dbname`` libpq expands."""
    kept = [(k, _public_dbname(v) if k.lower() == "dbname" else v)
            for k, v in parse_qsl(query, keep_blank_values=True) if not _secret(k)]
    return urlencode(kept)


def _conninfo_passwords(text: str) -> set[str]:
    """The passwords a connection string (``host=h password='p w'``) or a URI that libpq expands holds."""
    if "://" in text:
        return url_passwords(text)
    found = set()
    for key, value in _CONNINFO_PAIR.findall(text):
        if "password" in key.lower():
            if value.startswith("'"):
                value = value[1:-1]
            found.add(re.sub(r"\\(.)", r"\1", value))  # libpq's escapes, quoted or not (``SEC\ RET``)
    return found


def url_passwords(url: str) -> set[str]:
    """The passwords a store URL holds, each as written there and decoded (what no session may be given under any
    name): its own, a query parameter's (``?password=``, which the drivers take too), and those of a database name
    libpq expands (the path, or ``?dbname=``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return set()
    found = {password, unquote(password)} if password else set()
    dbnames = [unquote(parts.path.lstrip("/"))]
    for pair in parts.query.split("&"):
        key, _, raw = pair.partition("=")
        name = unquote_plus(key).lower()
        if raw and "password" in name:  # as written in the URL too (``s%40cret``: a URL holding it holds that form)
            found |= {raw, unquote_plus(raw)}
        elif raw and name == "dbname":
            dbnames.append(unquote_plus(raw))
    for dbname in dbnames:
        if _expanded(dbname):
            found |= _conninfo_passwords(dbname)
    return {p for p in found if p}


def shown_url(db_url: str) -> str:
    """``db_url`` as it may be shown (logs, ``labd status``, messages): no user, password or credential parameter."""
    if db_url.startswith("sqlite:"):
        return db_url
    if "://" not in db_url:  # not a URL at all (refused as such): whatever may stand before an ``@`` left out
        return db_url.split("@")[-1]
    try:
        parts = urlsplit(db_url)
        netloc = parts.hostname or ""
        netloc += f":{parts.port}" if parts.port else ""
    except ValueError:  # a port out of range: shown without its host part
        parts, netloc = urlsplit(db_url), "?"
    query = _public_query(parts.query)
    dbname = unquote(parts.path.lstrip("/"))
    path = "/" + quote(_public_dbname(dbname), safe="") if _expanded(dbname) else parts.path
    return f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else "")
