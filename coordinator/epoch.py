"""The durable leader record: who *may* act. PostgreSQL wins every disagreement with Redis.

Epoch changes (claim, release) lock the row FOR UPDATE first, so they wait for in-flight
fenced transactions (FOR KEY SHARE, see fencing.py), which then see the new state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool

from common.timefmt import iso_utc

READ_SQL = """
SELECT epoch, instance_id, released_at IS NOT NULL, handoff_to,
       EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at) * 1000,
       EXTRACT(EPOCH FROM clock_timestamp() - released_at) * 1000
FROM leader_record WHERE cluster = %s
"""

ENSURE_ROW_SQL = "INSERT INTO leader_record (cluster) VALUES (%s) ON CONFLICT DO NOTHING"

LOCK_ROW_SQL = "SELECT epoch FROM leader_record WHERE cluster = %s FOR UPDATE"

# The record is free when its holder is stale or released. A switchover release names a
# target (handoff_to): then only the target may claim until the handoff window has passed.
CLAIM_SQL = """
UPDATE leader_record
SET epoch = epoch + 1, instance_id = %(me)s, acquired_at = clock_timestamp(),
    heartbeat_at = clock_timestamp(), released_at = NULL, handoff_to = NULL
WHERE cluster = %(cluster)s AND epoch = %(epoch)s AND (
    instance_id IS NULL
    OR heartbeat_at IS NULL
    OR heartbeat_at < clock_timestamp() - %(stale_ms)s * interval '1 millisecond'
    OR (released_at IS NOT NULL AND (
        handoff_to IS NULL OR handoff_to = %(me)s
        OR released_at < clock_timestamp() - %(handoff_ms)s * interval '1 millisecond')))
RETURNING epoch
"""

HEARTBEAT_SQL = """
UPDATE leader_record SET heartbeat_at = clock_timestamp()
WHERE cluster = %s AND epoch = %s AND instance_id = %s AND released_at IS NULL
"""

RELEASE_SQL = """
UPDATE leader_record SET released_at = clock_timestamp(), handoff_to = %s
WHERE cluster = %s AND epoch = %s AND instance_id = %s AND released_at IS NULL
"""

HISTORY_SQL = """
INSERT INTO leadership_history (cluster, instance_id, epoch, event, reason)
VALUES (%s, %s, %s, %s, %s)
"""

LATEST_HISTORY_SQL = """
SELECT instance_id, epoch, event, reason, at FROM leadership_history
WHERE cluster = %s ORDER BY at DESC, id DESC LIMIT %s
"""


@dataclass(frozen=True)
class LeaderRecord:
    epoch: int
    instance_id: str | None
    released: bool
    handoff_to: str | None
    heartbeat_age_ms: float | None
    released_age_ms: float | None

    def stale(self, stale_after_ms: int) -> bool:
        return self.heartbeat_age_ms is None or self.heartbeat_age_ms > stale_after_ms

    def held(self, stale_after_ms: int) -> bool:
        """A live holder: someone claimed it, has not released, and heartbeats."""
        return self.instance_id is not None and not self.released and not self.stale(stale_after_ms)

    def free_for(self, me: str, stale_after_ms: int, handoff_ms: int) -> bool:
        """Would CLAIM_SQL let `me` take it now (modulo time passing)?"""
        if self.instance_id is None or self.stale(stale_after_ms):
            return True
        if not self.released:
            return False
        if self.handoff_to is None or self.handoff_to == me:
            return True
        return self.released_age_ms is not None and self.released_age_ms > handoff_ms

    def ms_until_free(self, me: str, stale_after_ms: int, handoff_ms: int) -> float:
        """How long until CLAIM_SQL would let `me` take it, if nothing else changes (0: now)."""
        if self.free_for(me, stale_after_ms, handoff_ms):
            return 0.0
        waits = [stale_after_ms - (self.heartbeat_age_ms or 0.0)]
        if self.released and self.released_age_ms is not None:
            waits.append(handoff_ms - self.released_age_ms)
        return max(1.0, min(waits))


@dataclass(frozen=True)
class HistoryEntry:
    instance_id: str
    epoch: int
    event: str
    reason: str
    at: str


class Reason(enum.StrEnum):
    """Why leadership changed: one `leadership_history` row each. `<event>:<cause>`."""

    ACQUIRED = "acquired"
    SIGTERM = "released:sigterm"
    SWITCHOVER = "released:switchover"
    DB_UNREACHABLE = "released:db_unreachable"
    CLAIM_TOO_LATE = "released:claim_too_late"
    LOOP_FAILED = "released:loop_failed"
    LEASE_EXPIRED = "lost:lease_expired"
    RENEW_DEADLINE = "lost:renew_deadline"
    TOKEN_MISMATCH = "lost:token_mismatch"
    EPOCH_SUPERSEDED = "lost:epoch_superseded"
    SPLIT_BRAIN = "demoted:split_brain"


def event_of(reason: str) -> str:
    """`released:sigterm` -> `released`; `acquired` -> `acquired`."""
    return reason.split(":", 1)[0]


class EpochStore:
    def __init__(self, pool: ConnectionPool, cluster: str, stale_after_ms: int, handoff_ms: int) -> None:
        self._pool = pool
        self.cluster = cluster
        self._stale_after_ms = stale_after_ms
        self._handoff_ms = handoff_ms

    def read(self) -> LeaderRecord:
        with self._pool.connection() as conn:
            row = conn.execute(READ_SQL, (self.cluster,)).fetchone()
            if row is None:
                conn.execute(ENSURE_ROW_SQL, (self.cluster,))
                row = conn.execute(READ_SQL, (self.cluster,)).fetchone()
        if row is None:  # only if the row was deleted between the two statements
            raise psycopg.OperationalError(f"leader_record of cluster {self.cluster!r} vanished while read")
        epoch, instance, released, handoff, hb_age, rel_age = row
        return LeaderRecord(
            epoch=int(epoch),
            instance_id=instance,
            released=bool(released),
            handoff_to=handoff,
            heartbeat_age_ms=None if hb_age is None else float(hb_age),
            released_age_ms=None if rel_age is None else float(rel_age),
        )

    def claim(self, expected_epoch: int, me: str) -> int | None:
        """Compare-and-set the epoch to expected+1 for `me`. None when the record is not free
        or the epoch moved on. The `acquired` history row commits with the claim."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(ENSURE_ROW_SQL, (self.cluster,))  # a cluster's first claim need not follow a read
            conn.execute(LOCK_ROW_SQL, (self.cluster,))
            row = conn.execute(
                CLAIM_SQL,
                {
                    "me": me,
                    "cluster": self.cluster,
                    "epoch": expected_epoch,
                    "stale_ms": self._stale_after_ms,
                    "handoff_ms": self._handoff_ms,
                },
            ).fetchone()
            if row is None:
                return None
            epoch = int(row[0])
            conn.execute(HISTORY_SQL, (self.cluster, me, epoch, Reason.ACQUIRED, Reason.ACQUIRED))
            return epoch

    def heartbeat(self, epoch: int, me: str) -> bool:
        """True when the row still names this epoch and instance; False: the DB has moved on."""
        with self._pool.connection() as conn:
            return conn.execute(HEARTBEAT_SQL, (self.cluster, epoch, me)).rowcount == 1

    def release(self, epoch: int, me: str, reason: str, handoff_to: str | None = None) -> bool:
        """Mark the record released (if still ours) and record why, in one transaction."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(LOCK_ROW_SQL, (self.cluster,))
            released = conn.execute(RELEASE_SQL, (handoff_to, self.cluster, epoch, me)).rowcount == 1
            conn.execute(HISTORY_SQL, (self.cluster, me, epoch, event_of(reason), reason))
            return released

    def record(self, epoch: int, me: str, reason: str) -> None:
        """A history row for a change that touched no record (the DB had already moved on)."""
        with self._pool.connection() as conn:
            conn.execute(HISTORY_SQL, (self.cluster, me, epoch, event_of(reason), reason))

    def history(self, limit: int) -> list[HistoryEntry]:
        with self._pool.connection() as conn:
            rows = conn.execute(LATEST_HISTORY_SQL, (self.cluster, limit)).fetchall()
        return [HistoryEntry(r[0], int(r[1]), r[2], r[3], iso_utc(r[4])) for r in rows]
