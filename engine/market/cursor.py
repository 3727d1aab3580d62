"""Where a replay stopped, in PostgreSQL (table market_replay_cursor, migration 0003), so a
restarted process -- or another replica -- resumes there.

Why the database and not a file under HAEXEC_STATE_DIR: replicas run on different hosts,
and the one that takes over must resume where the cluster stopped, not where its own disk
last saw it. A row per (cluster, file digest): an edited file is a new replay from its
start. The clock only moves forward (GREATEST), so two processes playing the same file
never move it back.
"""

from __future__ import annotations

import psycopg

from db.session import SessionLimits, connect
from engine.market.base import FeedUnavailable
from engine.market.replay import Cursor

LOAD_SQL = "SELECT position, data_ms FROM market_replay_cursor WHERE cluster = %s AND feed = %s"
SAVE_SQL = """
INSERT INTO market_replay_cursor AS c (cluster, feed, path, position, data_ms)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (cluster, feed) DO UPDATE
SET path = EXCLUDED.path,
    position = GREATEST(c.position, EXCLUDED.position),
    data_ms = GREATEST(c.data_ms, EXCLUDED.data_ms),
    updated_at = clock_timestamp()
"""


class PgCursorStore:
    def __init__(self, database_url: str, cluster: str, timeout_ms: int = 2000) -> None:
        self.url = database_url
        self.cluster = cluster
        self.limits = SessionLimits(timeout_ms, "haexec-replay")

    def load(self, feed: str) -> Cursor | None:
        try:
            with connect(self.url, self.limits) as conn:
                row = conn.execute(LOAD_SQL, (self.cluster, feed)).fetchone()
        except psycopg.Error as exc:
            raise FeedUnavailable(f"replay cursor could not be read: {_line(exc)}") from exc
        return Cursor(int(row[0]), int(row[1])) if row else None

    def save(self, feed: str, path: str, cursor: Cursor) -> None:
        try:
            with connect(self.url, self.limits) as conn:
                conn.execute(SAVE_SQL, (self.cluster, feed, path, cursor.position, cursor.data_ms))
        except psycopg.Error as exc:
            raise FeedUnavailable(f"replay cursor could not be saved: {_line(exc)}") from exc


def _line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
