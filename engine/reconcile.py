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

from engine.brokers.base import Broker, Position, PositionDiff

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


# What the database believes is open at this venue; closed rows are history and never read,
# so the cost follows the open book, not everything ever traded.
OPEN_SQL = """
SELECT ticket, symbol, side, volume FROM broker_positions WHERE cluster = %s AND broker = %s AND state = 'open'
"""
# Every new or changed position in one statement (origin is kept for a known ticket).
UPSERT_SQL = """
INSERT INTO broker_positions (cluster, broker, ticket, symbol, side, volume, tag, origin, state)
SELECT %(cluster)s, %(broker)s, ticket, symbol, side, volume, tag, origin, 'open'
FROM unnest(%(tickets)s::text[], %(symbols)s::text[], %(sides)s::text[], %(volumes)s::numeric[],
            %(tags)s::text[], %(origins)s::text[]) AS p(ticket, symbol, side, volume, tag, origin)
ON CONFLICT (cluster, broker, ticket) DO UPDATE
SET symbol = EXCLUDED.symbol, side = EXCLUDED.side, volume = EXCLUDED.volume, state = 'open',
    seen_at = clock_timestamp()
"""
VANISHED_SQL = """
UPDATE broker_positions SET state = 'closed', seen_at = clock_timestamp()
WHERE cluster = %s AND broker = %s AND ticket = ANY(%s) AND state = 'open'
"""
OURS_SQL = "SELECT tag FROM signals WHERE cluster = %s AND tag = ANY(%s)"
REPORT_SQL = "INSERT INTO reconciliations (cluster, instance_id, epoch, ok, report) VALUES (%s, %s, %s, %s, %s)"


def diff_positions(conn: Any, broker: Broker, cluster: str) -> PositionDiff:
    """The venue's open positions against the open rows of broker_positions, compared here.
    A venue that lives in this database diffs in SQL instead (`position_diff`), so only what
    changed leaves the server."""
    in_database = getattr(broker, "position_diff", None)
    if in_database is not None:
        return in_database(conn)
    positions = broker.positions()
    known = {r[0]: r for r in conn.execute(OPEN_SQL, (cluster, broker.name)).fetchall()}
    by_tag: dict[str, list[str]] = {}
    for p in positions:
        if p.tag:
            by_tag.setdefault(p.tag, []).append(p.ticket)
    seen = {p.ticket for p in positions}
    return PositionDiff(
        count=len(positions),
        new=[p for p in positions if p.ticket not in known],
        changed=[
            (p, (known[p.ticket][1], known[p.ticket][2], known[p.ticket][3]))
            for p in positions
            if p.ticket in known
            and (known[p.ticket][1], known[p.ticket][2], known[p.ticket][3]) != (p.symbol, p.side.value, p.volume)
        ],
        vanished=sorted(t for t in known if t not in seen),
        duplicate_tags={t: tickets for t, tickets in by_tag.items() if len(tickets) > 1},
    )


def reconcile(
    pool: ConnectionPool, broker: Broker, cluster: str, instance_id: str, epoch: int | None, timeout_ms: int
) -> Report:
    """Set-based: a diff of the venue against the open rows, then one statement each for what
    is new or changed and for what vanished. It costs what changed, plus one pass over the
    open book (on the server, for the paper venue)."""
    deadline = time.monotonic() + timeout_ms / 1000.0
    report = Report(broker=broker.name)
    with pool.connection() as conn, conn.transaction():
        diff = diff_positions(conn, broker, cluster)
        report.positions = diff.count
        report.duplicate_tags = diff.duplicate_tags
        for p, (symbol, side, volume) in diff.changed:
            report.mismatched.append(
                {
                    "ticket": p.ticket,
                    "db": [symbol, side, str(volume), "open"],
                    "broker": [p.symbol, p.side.value, str(p.volume), "open"],
                }
            )
        new_tags = [p.tag for p in diff.new if p.tag]
        ours = {r[0] for r in conn.execute(OURS_SQL, (cluster, new_tags))} if new_tags else set()
        origins = {p.ticket: "haexec" if p.tag in ours else "external" for p in diff.new}
        for p in diff.new:
            (report.backfilled_haexec if origins[p.ticket] == "haexec" else report.backfilled_external).append(p.ticket)
        if time.monotonic() > deadline:
            report.timed_out = True
        else:
            _upsert(conn, cluster, broker.name, diff.new + [p for p, _ in diff.changed], origins)
            report.vanished = diff.vanished
            if diff.vanished:
                conn.execute(VANISHED_SQL, (cluster, broker.name, diff.vanished))
        conn.execute(REPORT_SQL, (cluster, instance_id, epoch, report.ok, json.dumps(asdict(report))))
    level = logging.INFO if report.ok else logging.ERROR
    log.log(
        level,
        "reconciliation (%s): %d positions, %d backfilled (%d external), %d vanished, %d mismatched,"
        " %d duplicate tags%s",
        broker.name,
        report.positions,
        len(report.backfilled_haexec) + len(report.backfilled_external),
        len(report.backfilled_external),
        len(report.vanished),
        len(report.mismatched),
        len(report.duplicate_tags),
        ", TIMED OUT" if report.timed_out else "",
    )
    return report


def _upsert(conn: Any, cluster: str, broker: str, positions: list[Position], origins: dict[str, str]) -> None:
    if not positions:
        return
    conn.execute(
        UPSERT_SQL,
        {
            "cluster": cluster,
            "broker": broker,
            "tickets": [p.ticket for p in positions],
            "symbols": [p.symbol for p in positions],
            "sides": [p.side.value for p in positions],
            "volumes": [p.volume for p in positions],
            "tags": [p.tag for p in positions],
            "origins": [origins.get(p.ticket, "haexec") for p in positions],
        },
    )
