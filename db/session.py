"""Database sessions with hard limits.

Every session a replica opens is capped (statement, lock wait, idle in transaction, TCP),
so neither a blackholed socket nor a paused process can stall the HA loop or hold a
row lock that blocks a takeover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from db.urls import libpq_url


@dataclass(frozen=True)
class SessionLimits:
    timeout_ms: int
    application_name: str = "haexec"

    def connect_kwargs(self) -> dict[str, str | int]:
        """libpq connection parameters (see conninfo)."""
        t = self.timeout_ms
        return {
            "options": (f"-c statement_timeout={t} -c lock_timeout={t} -c idle_in_transaction_session_timeout={t}"),
            "application_name": self.application_name,
            # libpq counts connect_timeout in whole seconds and treats < 2 as 2.
            "connect_timeout": max(2, math.ceil(t / 1000)),
            "keepalives": 1,
            "keepalives_idle": 1,
            "keepalives_interval": 1,
            "keepalives_count": 2,
            "tcp_user_timeout": t,
        }


def connect(url: str, limits: SessionLimits, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(conninfo(url, limits), autocommit=autocommit)


def conninfo(url: str, limits: SessionLimits) -> str:
    """The URL with the session's limits as libpq parameters, in one connection string."""
    return make_conninfo(libpq_url(url), **limits.connect_kwargs())


def make_pool(url: str, limits: SessionLimits, name: str, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
    """A closed pool; the caller opens it (so start-up can retry and report)."""
    return ConnectionPool(
        conninfo(url, limits),
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        name=name,
        open=False,
        timeout=limits.timeout_ms / 1000,
        reconnect_timeout=3600,
    )
