"""Signals in PostgreSQL: intake, fenced claims, outcome compare-and-sets, history.

Status only moves by compare-and-set on (status, epoch), so a stale outcome never overwrites
a newer one; `executions` is insert-only, so every attempt's fact is kept even when the CAS
no longer matches. New actions (claims, expiry, re-execution) go through the coordinator's
fence; recording a fact does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine.model import SignalStatus

NOTIFY_CHANNEL = "haexec_signals"

INSERT_SIGNAL_SQL = """
INSERT INTO signals (cluster, fingerprint, intent_digest, tag, source, signal_id, payload,
                     received_by, expires_at)
VALUES (%(cluster)s, %(fingerprint)s, %(digest)s, %(tag)s, %(source)s, %(signal_id)s, %(payload)s,
        %(instance)s, %(expires_at)s)
ON CONFLICT (cluster, fingerprint) DO NOTHING
RETURNING id
"""

EVENT_SQL = """
INSERT INTO signal_events (signal, status, instance_id, epoch, actor, detail)
VALUES (%s, %s, %s, %s, %s, %s)
"""

EXECUTION_SQL = """
INSERT INTO executions (signal, epoch, instance_id, outcome, broker_ref, detail)
VALUES (%s, %s, %s, %s, %s, %s)
"""

CLAIM_SQL = """
UPDATE signals SET status = 'executing', epoch = %(epoch)s, attempt_at = clock_timestamp(),
       executed_by = %(instance)s, updated_at = clock_timestamp()
WHERE id = ANY(%(ids)s) AND cluster = %(cluster)s AND status = 'received'
RETURNING id, fingerprint, tag, payload
"""

# Outcome CAS: only the attempt that is current (same epoch, still executing) may settle it.
OUTCOME_SQL = """
UPDATE signals SET status = %(status)s, broker_ref = COALESCE(%(ref)s, broker_ref),
       volume = COALESCE(%(volume)s, volume), fill_price = COALESCE(%(price)s, fill_price),
       error = %(error)s, updated_at = clock_timestamp()
WHERE id = %(id)s AND status = 'executing' AND epoch = %(epoch)s
RETURNING EXTRACT(EPOCH FROM clock_timestamp() - received_at)
"""


@dataclass(frozen=True)
class Accepted:
    fingerprint: str
    status: str
    duplicate: bool
    conflict: bool = False  # a reused signal_id carrying a different intent


@dataclass(frozen=True)
class Claimed:
    id: int
    fingerprint: str
    tag: str
    payload: dict[str, Any]


def accept(
    conn: psycopg.Connection,
    cluster: str,
    instance: str,
    fingerprint: str,
    digest: str,
    tag: str,
    payload: dict[str, Any],
    source: str,
    signal_id: str | None,
    expires_at: datetime | None,
) -> Accepted:
    """Store a signal (and wake the leader) in one transaction; the caller answers only after
    this returns, so an accepted signal is never lost."""
    with conn.transaction():
        row = conn.execute(
            INSERT_SIGNAL_SQL,
            {
                "cluster": cluster,
                "fingerprint": fingerprint,
                "digest": digest,
                "tag": tag,
                "source": source,
                "signal_id": signal_id,
                "payload": json.dumps(payload),
                "instance": instance,
                "expires_at": expires_at,
            },
        ).fetchone()
        if row is not None:
            conn.execute(EVENT_SQL, (row[0], SignalStatus.RECEIVED, instance, None, None, "accepted"))
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, cluster))
            return Accepted(fingerprint, SignalStatus.RECEIVED, duplicate=False)
        existing = conn.execute(
            "SELECT status, intent_digest FROM signals WHERE cluster = %s AND fingerprint = %s",
            (cluster, fingerprint),
        ).fetchone()
    assert existing is not None  # rows are never deleted
    return Accepted(fingerprint, existing[0], duplicate=True, conflict=existing[1] != digest)


def claim(cur: psycopg.Cursor, cluster: str, instance: str, epoch: int, ids: list[int]) -> list[Claimed]:
    """received -> executing under `epoch`. Call inside the coordinator's fenced transaction."""
    rows = cur.execute(CLAIM_SQL, {"epoch": epoch, "instance": instance, "cluster": cluster, "ids": ids}).fetchall()
    for r in rows:
        cur.execute(EVENT_SQL, (r[0], SignalStatus.EXECUTING, instance, epoch, None, "claimed"))
    return [Claimed(r[0], r[1], r[2], r[3]) for r in rows]


def record_outcome(
    cur: psycopg.Cursor,
    signal: int,
    epoch: int,
    instance: str,
    status: SignalStatus,
    outcome: str,
    ref: str | None = None,
    volume: Decimal | None = None,
    price: Decimal | None = None,
    error: str | None = None,
    actor: str | None = None,
) -> float | None:
    """Record an attempt's fact (always) and settle the signal if this attempt is current.
    Returns seconds since intake when the status changed, None when a newer attempt (or an
    operator) had already moved it on."""
    cur.execute(EXECUTION_SQL, (signal, epoch, instance, outcome, ref, error or ref))
    row = cur.execute(
        OUTCOME_SQL,
        {
            "status": status,
            "ref": ref,
            "volume": volume,
            "price": price,
            "error": error,
            "id": signal,
            "epoch": epoch,
        },
    ).fetchone()
    if row is None:
        return None
    cur.execute(EVENT_SQL, (signal, status, instance, epoch, actor, error or ref))
    return float(row[0])


def received_ids(conn: psycopg.Connection, cluster: str, limit: int) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM signals WHERE cluster = %s AND status = 'received' ORDER BY id LIMIT %s",
        (cluster, limit),
    ).fetchall()
    return [r[0] for r in rows]


def any_due(conn: psycopg.Connection, cluster: str) -> bool:
    """A read-only look, so an idle leader's sweep writes nothing."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM signals WHERE cluster = %s AND status = 'received' "
        "AND expires_at IS NOT NULL AND expires_at <= clock_timestamp())",
        (cluster,),
    ).fetchone()
    return bool(row and row[0])


def expire_due(cur: psycopg.Cursor, cluster: str, instance: str, epoch: int) -> list[str]:
    """received -> expired for signals past expires_at (fenced by the caller): never executed late."""
    rows = cur.execute(
        """
        UPDATE signals SET status = 'expired', error = 'expired before execution',
               updated_at = clock_timestamp()
        WHERE cluster = %s AND status = 'received' AND expires_at IS NOT NULL
          AND expires_at <= clock_timestamp()
        RETURNING id, fingerprint
        """,
        (cluster,),
    ).fetchall()
    for r in rows:
        cur.execute(EVENT_SQL, (r[0], SignalStatus.EXPIRED, instance, epoch, None, "expired before execution"))
    return [r[1] for r in rows]


def requeue(cur: psycopg.Cursor, signal: int, epoch: int, instance: str, reason: str) -> bool:
    """executing -> received for an attempt that never reached the broker."""
    row = cur.execute(
        "UPDATE signals SET status = 'received', updated_at = clock_timestamp() "
        "WHERE id = %s AND status = 'executing' AND epoch = %s RETURNING id",
        (signal, epoch),
    ).fetchone()
    if row:
        cur.execute(EVENT_SQL, (signal, SignalStatus.RECEIVED, instance, epoch, None, reason))
    return row is not None


@dataclass(frozen=True)
class Unsettled:
    id: int
    fingerprint: str
    tag: str
    payload: dict[str, Any]
    status: str
    epoch: int | None
    attempt_age_ms: float


def unsettled(conn: psycopg.Connection, cluster: str, below_epoch: int) -> list[Unsettled]:
    """Attempts left by earlier epochs (their leader died or was paused mid-call), and held ones."""
    rows = conn.execute(
        """
        SELECT id, fingerprint, tag, payload, status, epoch,
               EXTRACT(EPOCH FROM clock_timestamp() - attempt_at) * 1000
        FROM signals
        WHERE cluster = %s AND ((status = 'executing' AND epoch < %s) OR status = 'in_doubt')
        ORDER BY id
        """,
        (cluster, below_epoch),
    ).fetchall()
    return [Unsettled(r[0], r[1], r[2], r[3], r[4], r[5], float(r[6] or 0)) for r in rows]


def take_over(
    cur: psycopg.Cursor,
    signal: int,
    old_status: str,
    old_epoch: int | None,
    epoch: int,
    instance: str,
    detail: str,
) -> bool:
    """Move an older attempt (executing or in_doubt) under this epoch, fenced by the caller."""
    row = cur.execute(
        """
        UPDATE signals SET status = 'executing', epoch = %s, attempt_at = clock_timestamp(),
               executed_by = %s, updated_at = clock_timestamp()
        WHERE id = %s AND status = %s AND epoch IS NOT DISTINCT FROM %s RETURNING id
        """,
        (epoch, instance, signal, old_status, old_epoch),
    ).fetchone()
    if row:
        cur.execute(EVENT_SQL, (signal, SignalStatus.EXECUTING, instance, epoch, None, detail))
    return row is not None


def settle_held(
    cur: psycopg.Cursor,
    signal: int,
    from_status: str,
    epoch: int | None,
    status: SignalStatus,
    instance: str,
    actor: str | None,
    detail: str,
    ref: str | None = None,
) -> bool:
    """executing/in_doubt -> status (operator or resolver), CAS on the status and epoch seen."""
    row = cur.execute(
        """
        UPDATE signals SET status = %s, broker_ref = COALESCE(%s, broker_ref), error = %s,
               updated_at = clock_timestamp()
        WHERE id = %s AND status = %s AND epoch IS NOT DISTINCT FROM %s RETURNING id
        """,
        (status, ref, None if status == SignalStatus.EXECUTED else detail, signal, from_status, epoch),
    ).fetchone()
    if row:
        cur.execute(EVENT_SQL, (signal, status, instance, epoch, actor, detail))
    return row is not None


def show(conn: psycopg.Connection, cluster: str, fingerprint: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        sig = cur.execute(
            """
            SELECT id, fingerprint, tag, status, source, signal_id, payload, received_by, received_at,
                   expires_at, epoch, executed_by, broker_ref, volume, fill_price, error, updated_at
            FROM signals WHERE cluster = %s AND fingerprint = %s
            """,
            (cluster, fingerprint),
        ).fetchone()
        if sig is None:
            return None
        events = cur.execute(
            "SELECT status, instance_id, epoch, actor, detail, at FROM signal_events WHERE signal = %s ORDER BY id",
            (sig.pop("id"),),
        ).fetchall()
    sig["events"] = events
    return _jsonable(sig)


def list_signals(conn: psycopg.Connection, cluster: str, status: str | None, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT fingerprint, tag, status, source, signal_id, received_at, epoch, broker_ref, error
            FROM signals WHERE cluster = %s AND (%s::text IS NULL OR status = %s)
            ORDER BY received_at DESC, id DESC LIMIT %s
            """,
            (cluster, status, status, limit),
        ).fetchall()
    return [_jsonable(r) for r in rows]


def count_in_doubt(conn: psycopg.Connection, cluster: str) -> int:
    row = conn.execute("SELECT count(*) FROM signals WHERE cluster = %s AND status = 'in_doubt'", (cluster,)).fetchone()
    return int(row[0]) if row else 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value
