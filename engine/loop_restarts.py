"""The restart log of a replica's supervised loops (table loop_restarts, migration 0007).

Counted in PostgreSQL so that the budget outlives the process: a replica whose supervisor
(systemd, supervisord) restarts it after a crash still sees the restarts of the last hour.
The database's clock judges the window, so no replica's wall clock is trusted with it.
"""

from __future__ import annotations

from psycopg_pool import ConnectionPool

RESTARTED = "restarted"
FAILED = "failed"

RECORD_SQL = """
INSERT INTO loop_restarts (cluster, instance_id, loop, action, reason) VALUES (%s, %s, %s, %s, %s)
"""
RECENT_SQL = """
SELECT count(*) FROM loop_restarts
WHERE cluster = %s AND instance_id = %s AND loop = %s AND action = 'restarted'
  AND at > clock_timestamp() - %s * interval '1 millisecond'
"""


class PgRestartLog:
    """Restarts of this instance's loops. Not fenced: every replica records its own, leader
    or not, and nothing here acts on the cluster."""

    def __init__(self, pool: ConnectionPool, cluster: str, instance_id: str) -> None:
        self._pool = pool
        self._cluster = cluster
        self._instance = instance_id

    def recent(self, loop: str, window_ms: int) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(RECENT_SQL, (self._cluster, self._instance, loop, window_ms)).fetchone()
        return int(row[0]) if row else 0

    def record(self, loop: str, action: str, reason: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(RECORD_SQL, (self._cluster, self._instance, loop, action, reason))
