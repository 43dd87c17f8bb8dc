"""A store's URL as it may be shown: in logs, in ``labd status``, in messages and in the home's record of its store.

No user, no password, and no credential given as a query parameter (``?password=``, which the PostgreSQL drivers
take as the password too: ``labd serve --check`` printed it, ``daemon.status`` sent it, ``<home>/store`` recorded it;
attack review).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["shown_url"]

#: query parameters of a store URL that are credentials (libpq's and its drivers'): never shown nor recorded
_SECRET_PARAMS = ("password", "secret", "token", "passfile", "sslkey")


def _public_query(query: str) -> str:
    """``query`` without its credential parameters."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
            if not any(word in k.lower() for word in _SECRET_PARAMS)]
    return urlencode(kept)


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
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
