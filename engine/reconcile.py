"""Reconciliation: the broker's positions against what the database knows, when a replica
becomes leader and on `haexec reconcile`. The venue is authoritative for what exists; the
database for what haexec did. Missing positions are backfilled (as external when no signal
owns their tag), vanished ones marked closed, mismatches and duplicate tags flagged."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from engine.brokers.base import Broker, Position

log = logging.getLogger("haexec.engine.reconcile")

# On becoming leader the first claim waits for this at most; trading is never blocked for good.
RECONCILE_TIMEOUT_MS = 10_000


@dataclass
class Report:
    broker: str
    positions: int = 0
    backfilled_external: list[str] = field(default_factory=list)
    backfilled_haexec: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    duplicate_tags: dict[str, list[str]] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.duplicate_tags or self.timed_out)


def reconcile(
    pool: ConnectionPool, broker: Broker, cluster: str, instance_id: str, epoch: int | None, timeout_ms: int
) -> Report:
    deadline = time.monotonic() + timeout_ms / 1000.0
    report = Report(broker=broker.name)
    positions = broker.positions()
    report.positions = len(positions)
    by_tag: dict[str, list[str]] = {}
    for p in positions:
        if p.tag:
            by_tag.setdefault(p.tag, []).append(p.ticket)
    report.duplicate_tags = {t: tickets for t, tickets in by_tag.items() if len(tickets) > 1}
    with pool.connection() as conn, conn.transaction():
        known = {
            r[0]: r
            for r in conn.execute(
                "SELECT ticket, symbol, side, volume, state FROM broker_positions WHERE cluster = %s AND broker = %s",
                (cluster, broker.name),
            ).fetchall()
        }
        tags = {p.tag for p in positions if p.tag}
        ours = {
            r[0]
            for r in conn.execute(
                "SELECT tag FROM signals WHERE cluster = %s AND tag = ANY(%s)", (cluster, list(tags))
            ).fetchall()
        }
        seen: set[str] = set()
        for p in positions:
            if time.monotonic() > deadline:
                report.timed_out = True
                break
            seen.add(p.ticket)
            row = known.get(p.ticket)
            if row is None:
                origin = "haexec" if p.tag in ours else "external"
                _upsert(conn, cluster, broker.name, p, origin)
                (report.backfilled_haexec if origin == "haexec" else report.backfilled_external).append(p.ticket)
            elif row[1] != p.symbol or row[2] != p.side.value or row[3] != p.volume or row[4] != "open":
                report.mismatched.append(
                    {
                        "ticket": p.ticket,
                        "db": [row[1], row[2], str(row[3]), row[4]],
                        "broker": [p.symbol, p.side.value, str(p.volume), "open"],
                    }
                )
                _upsert(conn, cluster, broker.name, p, None)
        if not report.timed_out:
            for ticket, row in known.items():
                if ticket not in seen and row[4] == "open":
                    conn.execute(
                        "UPDATE broker_positions SET state = 'closed', seen_at = clock_timestamp() "
                        "WHERE cluster = %s AND broker = %s AND ticket = %s",
                        (cluster, broker.name, ticket),
                    )
                    report.vanished.append(ticket)
        conn.execute(
            "INSERT INTO reconciliations (cluster, instance_id, epoch, ok, report) VALUES (%s, %s, %s, %s, %s)",
            (cluster, instance_id, epoch, report.ok, json.dumps(asdict(report))),
        )
    level = logging.INFO if report.ok else logging.ERROR
    log.log(
        level,
        "reconciliation (%s): %d positions, %d backfilled external, %d vanished, %d mismatched, %d duplicate tags%s",
        broker.name,
        report.positions,
        len(report.backfilled_external),
        len(report.vanished),
        len(report.mismatched),
        len(report.duplicate_tags),
        ", TIMED OUT" if report.timed_out else "",
    )
    return report


def _upsert(conn: Any, cluster: str, broker: str, p: Position, origin: str | None) -> None:
    conn.execute(
        """
        INSERT INTO broker_positions (cluster, broker, ticket, symbol, side, volume, tag, origin, state)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'open')
        ON CONFLICT (cluster, broker, ticket) DO UPDATE
        SET symbol = EXCLUDED.symbol, side = EXCLUDED.side, volume = EXCLUDED.volume, state = 'open',
            seen_at = clock_timestamp()
        """,
        (cluster, broker, p.ticket, p.symbol, p.side.value, p.volume, p.tag, origin or "haexec"),
    )
