"""The cluster-wide kill switch (`controls`): who halted trading, when and why.

One row per cluster. The executor reads it at every claim and again before every MT5 send;
every replica samples it into `haexec_halted`, so the state shows on any replica's metrics,
whichever leads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from common.timefmt import iso_utc
from engine import audit, metrics

READ_SQL = "SELECT halted, reason, actor, at FROM controls WHERE cluster = %s"
WRITE_SQL = """
INSERT INTO controls (cluster, halted, reason, actor) VALUES (%s, %s, %s, %s)
ON CONFLICT (cluster) DO UPDATE SET halted = EXCLUDED.halted, reason = EXCLUDED.reason,
    actor = EXCLUDED.actor, at = clock_timestamp()
"""


@dataclass(frozen=True)
class KillSwitch:
    halted: bool = False
    reason: str | None = None
    actor: str | None = None
    at: datetime | None = None  # when it was last set (halted or resumed)

    def describe(self) -> str:
        """One line: the reason every rejected signal carries, and what status shows."""
        state = "trading is halted" if self.halted else "trading"
        who = f" by {self.actor}" if self.actor else ""
        when = f" since {iso_utc(self.at)}" if self.at else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{state}{who}{when}{why}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "halted": self.halted,
            "reason": self.reason,
            "actor": self.actor,
            "at": iso_utc(self.at) if self.at else None,
        }


def read(conn: psycopg.Connection | psycopg.Cursor, cluster: str) -> KillSwitch:
    row = conn.execute(READ_SQL, (cluster,)).fetchone()
    switch = KillSwitch() if row is None else KillSwitch(bool(row[0]), row[1], row[2], row[3])
    metrics.HALTED.set(1 if switch.halted else 0)
    return switch


def write(conn: psycopg.Connection, cluster: str, halted: bool, reason: str | None, actor: str) -> None:
    """Halt or resume, and its operator audit row, in one transaction."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(WRITE_SQL, (cluster, halted, reason, actor))
        audit.record(cur, cluster, "halt" if halted else "resume", actor, reason)
