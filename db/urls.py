"""Database URL forms: psycopg takes libpq URLs, SQLAlchemy (alembic) wants a driver name."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^(postgres|postgresql)(\+\w+)?://")


def libpq_url(url: str) -> str:
    """The URL as libpq understands it (drops a SQLAlchemy driver suffix)."""
    return _SCHEME.sub("postgresql://", url, count=1)


def sqlalchemy_url(url: str) -> str:
    return _SCHEME.sub("postgresql+psycopg://", url, count=1)


def is_postgres_url(url: str) -> bool:
    return bool(_SCHEME.match(url))


def redact(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
