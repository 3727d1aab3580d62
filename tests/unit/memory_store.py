"""An in-memory stand-in for `coordinator.epoch.EpochStore`.

Same methods, same semantics as the SQL in epoch.py (each method is a transcription of its
statement), except that "now" is the injected FakeClock instead of the database clock. Set
`down = True` (every call) or add a method name to `failing` (that call only) to make it
raise `psycopg.OperationalError`, as an unreachable database does. `calls` lists every call
attempted, so a test can assert that a replica did not even try to claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from common.clock import FakeClock
from coordinator.epoch import HistoryEntry, LeaderRecord, event_of


@dataclass
class Row:
    """One `leader_record` row; times are FakeClock milliseconds."""

    epoch: int = 0
    instance_id: str | None = None
    acquired_at: float | None = None
    heartbeat_at: float | None = None
    released_at: float | None = None
    handoff_to: str | None = None


class MemoryEpochStore:
    def __init__(self, cluster: str, clock: FakeClock, stale_after_ms: int, handoff_ms: int) -> None:
        self.cluster = cluster
        self.clock = clock
        self._stale_after_ms = stale_after_ms
        self._handoff_ms = handoff_ms
        self.row = Row()
        self.rows: list[HistoryEntry] = []  # leadership_history, oldest first
        self.down = False
        self.failing: set[str] = set()
        self.calls: list[str] = []

    def _enter(self, method: str) -> float:
        self.calls.append(method)
        if self.down or method in self.failing:
            raise psycopg.OperationalError(f"connection to memory store failed ({method})")
        return self.clock.now_ms()

    def _insert_history(self, me: str, epoch: int, event: str, reason: str) -> None:
        self.rows.append(HistoryEntry(me, epoch, event, reason, f"{self.clock.now_ms():.0f}"))

    # READ_SQL (the row is created on demand: here it always exists, epoch 0, nobody)
    def read(self) -> LeaderRecord:
        now = self._enter("read")
        r = self.row
        return LeaderRecord(
            epoch=r.epoch,
            instance_id=r.instance_id,
            released=r.released_at is not None,
            handoff_to=r.handoff_to,
            heartbeat_age_ms=None if r.heartbeat_at is None else now - r.heartbeat_at,
            released_age_ms=None if r.released_at is None else now - r.released_at,
        )

    # CLAIM_SQL + the `acquired` history row, in one transaction
    def claim(self, expected_epoch: int, me: str) -> int | None:
        now = self._enter("claim")
        r = self.row
        free = (
            r.instance_id is None
            or r.heartbeat_at is None
            or r.heartbeat_at < now - self._stale_after_ms
            or (
                r.released_at is not None
                and (r.handoff_to is None or r.handoff_to == me or r.released_at < now - self._handoff_ms)
            )
        )
        if r.epoch != expected_epoch or not free:
            return None
        self.row = Row(epoch=r.epoch + 1, instance_id=me, acquired_at=now, heartbeat_at=now)
        self._insert_history(me, self.row.epoch, "acquired", "acquired")
        return self.row.epoch

    # HEARTBEAT_SQL
    def heartbeat(self, epoch: int, me: str) -> bool:
        now = self._enter("heartbeat")
        r = self.row
        if r.epoch == epoch and r.instance_id == me and r.released_at is None:
            r.heartbeat_at = now
            return True
        return False

    # RELEASE_SQL + a history row (always), in one transaction
    def release(self, epoch: int, me: str, reason: str, handoff_to: str | None = None) -> bool:
        now = self._enter("release")
        r = self.row
        released = r.epoch == epoch and r.instance_id == me and r.released_at is None
        if released:
            r.released_at = now
            r.handoff_to = handoff_to
        self._insert_history(me, epoch, event_of(reason), reason)
        return released

    # HISTORY_SQL
    def record(self, epoch: int, me: str, reason: str) -> None:
        self._enter("record")
        self._insert_history(me, epoch, event_of(reason), reason)

    # LATEST_HISTORY_SQL (newest first)
    def history(self, limit: int) -> list[HistoryEntry]:
        self._enter("history")
        return list(reversed(self.rows))[:limit]
