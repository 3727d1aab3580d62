"""Database URL forms: psycopg takes libpq URLs, SQLAlchemy (alembic) wants a driver name."""

from __future__ import annotations

import re
from urllib.parse import unquote

_SCHEME = re.compile(r"^(postgres|postgresql)(\+\w+)?://")


def libpq_url(url: str) -> str:
    """The URL as libpq understands it (drops a SQLAlchemy driver suffix)."""
    return _SCHEME.sub("postgresql://", url, count=1)


def sqlalchemy_url(url: str) -> str:
    return _SCHEME.sub("postgresql+psycopg://", url, count=1)


def is_postgres_url(url: str) -> bool:
    return bool(_SCHEME.match(url))


def redact(url: str) -> str:
    """The URL with every password replaced by ``***``, fit for logs and error messages: the
    userinfo's (also with an empty user, ``://:pw@``) and any query option whose name says
    password (``?password=``, ``sslpassword=``, ``sentinel_password=``). Works on malformed
    URLs too: it never parses them, so it cannot fail on one and print it whole."""
    head, sep, query = url.partition("?")
    scheme, colon_slashes, rest = head.partition("://")
    if colon_slashes:
        # The userinfo ends at the last '@' before the query: passwords may contain '@' and '/'.
        at = rest.rfind("@")
        if at >= 0:
            user, has_password, _ = rest[:at].partition(":")
            rest = f"{user}:***@{rest[at + 1 :]}" if has_password else rest
        head = f"{scheme}://{rest}"
    if sep:
        parts = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            parts.append(f"{name}=***" if eq and "password" in unquote(name).lower() else item)
        query = "&".join(parts)
    return head + sep + query
