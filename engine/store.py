"""Signals in PostgreSQL: intake, fenced claims, outcome compare-and-sets, history.

Status only moves by compare-and-set on (status, epoch), so a stale outcome never overwrites
a newer one; `executions` is insert-only, so every attempt's fact is kept even when the CAS
no longer matches. New actions (claims, expiry, re-execution) go through the coordinator's
fence; recording a fact does not.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from common.timefmt import iso_utc
from engine.model import SignalStatus

NOTIFY_CHANNEL = "haexec_signals"

# One statement in an autocommit session, so one round trip and one commit: the signal, its
# first event and the leader's wake-up (pg_notify runs once, for the inserted row only).
ACCEPT_SQL = """
WITH inserted AS (
    INSERT INTO signals (cluster, fingerprint, intent_digest, tag, source, signal_id, payload,
                         received_by, expires_at)
    VALUES (%(cluster)s, %(fingerprint)s, %(digest)s, %(tag)s, %(source)s, %(signal_id)s, %(payload)s,
            %(instance)s, %(expires_at)s)
    ON CONFLICT (cluster, fingerprint) DO NOTHING
    RETURNING id
), event AS (
    INSERT INTO signal_events (signal, status, instance_id, actor, detail)
    SELECT id, 'received', %(instance)s, NULL, 'accepted' FROM inserted
)
SELECT id, pg_notify(%(channel)s, %(cluster)s) FROM inserted
"""

EVENT_SQL = """
INSERT INTO signal_events (signal, status, instance_id, epoch, actor, detail)
VALUES (%s, %s, %s, %s, %s, %s)
"""

FACTS_SQL = """
INSERT INTO executions (signal, epoch, instance_id, outcome, broker_ref, detail)
SELECT unnest(%(ids)s::bigint[]), %(epoch)s, %(instance)s, %(outcome)s, NULL, %(detail)s
"""

# Every received signal of the cluster past its expires_at -> expired, with its event: the
# first CTEs of both the claim and the housekeeping expiry, so the two expire alike.
EXPIRE_DUE_CTES = """
due AS (
    UPDATE signals SET status = 'expired', error = 'expired before execution', updated_at = clock_timestamp()
    WHERE cluster = %(cluster)s AND status = 'received' AND expires_at <= statement_timestamp()
    RETURNING id, fingerprint
), due_event AS (
    INSERT INTO signal_events (signal, status, instance_id, epoch, actor, detail)
    SELECT id, 'expired', %(instance)s, %(epoch)s, NULL, 'expired before execution' FROM due
)"""

EXPIRE_DUE_SQL = f"WITH {EXPIRE_DUE_CTES} SELECT fingerprint FROM due ORDER BY id"

# The oldest `limit` received signals that have not expired -> executing under `epoch`, and in
# the same statement every received signal past its expires_at -> expired: a NOTIFY claims at
# once, so expiry cannot wait for the sweep timer. Both sides compare with one
# statement_timestamp(), so a row is either expired or claimable, never both.
CLAIM_SQL = f"""
WITH {EXPIRE_DUE_CTES}, next AS (
    SELECT id FROM signals WHERE cluster = %(cluster)s AND status = 'received'
      AND (expires_at IS NULL OR expires_at > statement_timestamp())
    ORDER BY id LIMIT %(limit)s FOR UPDATE
), claimed AS (
    UPDATE signals s SET status = 'executing', epoch = %(epoch)s, attempt_at = clock_timestamp(),
           executed_by = %(instance)s, updated_at = clock_timestamp()
    FROM next WHERE s.id = next.id
    RETURNING s.id, s.fingerprint, s.tag, s.payload
), event AS (
    INSERT INTO signal_events (signal, status, instance_id, epoch, actor, detail)
    SELECT id, 'executing', %(instance)s, %(epoch)s, NULL, 'claimed' FROM claimed
)
SELECT id, fingerprint, tag, payload FROM claimed
UNION ALL
SELECT id, fingerprint, NULL, NULL FROM due
ORDER BY id
"""

# Every attempt's fact is inserted; the status moves only for signals whose current attempt
# this is (same epoch, still executing), so a stale outcome never overwrites a newer one.
OUTCOMES_SQL = """
WITH outcome AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(outcomes)s::text[], %(refs)s::text[],
                         %(volumes)s::numeric[], %(prices)s::numeric[], %(errors)s::text[])
             AS o(id, status, outcome, ref, volume, price, error)
), fact AS (
    INSERT INTO executions (signal, epoch, instance_id, outcome, broker_ref, detail)
    SELECT id, %(epoch)s, %(instance)s, outcome, ref, COALESCE(error, ref) FROM outcome
), settled AS (
    UPDATE signals s SET status = o.status, broker_ref = COALESCE(o.ref, s.broker_ref),
           volume = COALESCE(o.volume, s.volume), fill_price = COALESCE(o.price, s.fill_price),
           error = o.error, updated_at = clock_timestamp()
    FROM outcome o
    WHERE s.id = o.id AND s.status = 'executing' AND s.epoch = %(epoch)s
    RETURNING s.id, s.status, COALESCE(o.error, o.ref) AS detail,
              EXTRACT(EPOCH FROM clock_timestamp() - s.received_at) AS latency
), event AS (
    INSERT INTO signal_events (signal, status, instance_id, epoch, actor, detail)
    SELECT id, status, %(instance)s, %(epoch)s, NULL, detail FROM settled
)
SELECT id, latency FROM settled
"""

REQUEUE_SQL = """
WITH back AS (
    UPDATE signals SET status = 'received', updated_at = clock_timestamp()
    WHERE id = ANY(%(ids)s) AND status = 'executing' AND epoch = %(epoch)s
    RETURNING id
), event AS (
    INSERT INTO signal_events (signal, status, instance_id, epoch, actor, detail)
    SELECT id, 'received', %(instance)s, %(epoch)s, NULL, %(reason)s FROM back
)
SELECT count(*) FROM back
"""


# Just before one order goes to a venue that sends one at a time: its attempt is stamped
# with its own send time (the in-doubt grace counts from here, not from the batch's claim),
# and expiry and the kill switch are read again, so a halt mid-batch stops the rest.
STAMP_SQL = """
UPDATE signals s SET attempt_at = clock_timestamp()
WHERE s.id = %(id)s AND s.status = 'executing' AND s.epoch = %(epoch)s
RETURNING s.expires_at IS NOT NULL AND s.expires_at <= clock_timestamp(),
          COALESCE((SELECT c.halted FROM controls c WHERE c.cluster = s.cluster), false)
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


@dataclass(frozen=True)
class Settlement:
    """One attempt's outcome: recorded always, and settling its signal if the attempt is current."""

    signal: int
    status: SignalStatus
    outcome: str
    ref: str | None = None
    volume: Decimal | None = None
    price: Decimal | None = None
    error: str | None = None


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
    """Store a signal (and wake the leader) in one committed statement; the caller answers only
    after this returns, so an accepted signal is never lost. `conn` is in autocommit mode."""
    row = conn.execute(
        ACCEPT_SQL,
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
            "channel": NOTIFY_CHANNEL,
        },
    ).fetchone()
    if row is not None:
        return Accepted(fingerprint, SignalStatus.RECEIVED, duplicate=False)
    existing = conn.execute(
        "SELECT status, intent_digest FROM signals WHERE cluster = %s AND fingerprint = %s",
        (cluster, fingerprint),
    ).fetchone()
    assert existing is not None  # rows are never deleted
    return Accepted(fingerprint, existing[0], duplicate=True, conflict=existing[1] != digest)


@dataclass(frozen=True)
class Claim:
    claimed: list[Claimed]
    expired: list[str]  # fingerprints of the signals that expired instead


def claim(cur: psycopg.Cursor, cluster: str, instance: str, epoch: int, limit: int) -> Claim:
    """The oldest `limit` unexpired received signals -> executing under `epoch`; the expired
    ones -> expired. Call inside the coordinator's fenced transaction."""
    rows = cur.execute(CLAIM_SQL, {"epoch": epoch, "instance": instance, "cluster": cluster, "limit": limit}).fetchall()
    return Claim(
        claimed=[Claimed(r[0], r[1], r[2], r[3]) for r in rows if r[2] is not None],
        expired=[r[1] for r in rows if r[2] is None],
    )


def record_outcomes(cur: psycopg.Cursor, epoch: int, instance: str, settlements: list[Settlement]) -> dict[int, float]:
    """Record every attempt's fact and settle the signals whose current attempt it is, in one
    statement. Returns seconds since intake for each signal whose status changed; a signal left
    out had been moved on already (by a newer attempt or an operator)."""
    if not settlements:
        return {}
    rows = cur.execute(
        OUTCOMES_SQL,
        {
            "epoch": epoch,
            "instance": instance,
            "ids": [s.signal for s in settlements],
            "statuses": [s.status.value for s in settlements],
            "outcomes": [s.outcome for s in settlements],
            "refs": [s.ref for s in settlements],
            "volumes": [s.volume for s in settlements],
            "prices": [s.price for s in settlements],
            "errors": [s.error for s in settlements],
        },
    ).fetchall()
    return {int(r[0]): float(r[1]) for r in rows}


def record_facts(cur: psycopg.Cursor, signals: list[int], epoch: int, instance: str, outcome: str, detail: str) -> None:
    """Attempts that changed nothing (the venue refused a deposed leader): kept as facts only."""
    cur.execute(FACTS_SQL, {"ids": signals, "epoch": epoch, "instance": instance, "outcome": outcome, "detail": detail})


class Gate(enum.Enum):
    SEND = "send"
    GONE = "gone"  # no longer this epoch's executing attempt (an operator or a newer leader has it)
    EXPIRED = "expired"
    HALTED = "halted"


def stamp(cur: psycopg.Cursor, signal: int, epoch: int) -> Gate:
    """Stamp `signal`'s attempt at its own send and say whether it may go (see STAMP_SQL)."""
    row = cur.execute(STAMP_SQL, {"id": signal, "epoch": epoch}).fetchone()
    if row is None:
        return Gate.GONE
    return Gate.HALTED if row[1] else Gate.EXPIRED if row[0] else Gate.SEND


def lock_signal(cur: psycopg.Cursor, cluster: str, fingerprint: str) -> tuple[int, str, int | None] | None:
    """(id, status, epoch) of a signal, locked for the rest of the transaction (an operator's
    settlement must not race the executor's compare-and-set), or None."""
    row = cur.execute(
        "SELECT id, status, epoch FROM signals WHERE cluster = %s AND fingerprint = %s FOR UPDATE",
        (cluster, fingerprint),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), None if row[2] is None else int(row[2]))


def any_received(conn: psycopg.Connection, cluster: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM signals WHERE cluster = %s AND status = 'received')", (cluster,)
    ).fetchone()
    return bool(row and row[0])


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
    rows = cur.execute(EXPIRE_DUE_SQL, {"cluster": cluster, "instance": instance, "epoch": epoch}).fetchall()
    return [r[0] for r in rows]


def requeue(cur: psycopg.Cursor, signals: list[int], epoch: int, instance: str, reason: str) -> int:
    """executing -> received for attempts that never reached the broker. Returns how many moved."""
    row = cur.execute(REQUEUE_SQL, {"ids": signals, "epoch": epoch, "instance": instance, "reason": reason}).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Unsettled:
    id: int
    fingerprint: str
    tag: str
    payload: dict[str, Any]
    status: str
    epoch: int | None
    attempt_age_ms: float


def unsettled(conn: psycopg.Connection, cluster: str, epoch: int, orphan_after_ms: int) -> list[Unsettled]:
    """Attempts left by earlier epochs (their leader died or was paused mid-call), held ones, and
    this epoch's own attempts older than `orphan_after_ms` (the caller runs between its batches,
    so such an attempt is one whose outcome could not be recorded, e.g. the database went away)."""
    rows = conn.execute(
        """
        SELECT id, fingerprint, tag, payload, status, epoch,
               EXTRACT(EPOCH FROM clock_timestamp() - attempt_at) * 1000
        FROM signals
        WHERE cluster = %s AND (status = 'in_doubt' OR (status = 'executing' AND (epoch < %s
              OR attempt_at < clock_timestamp() - %s * interval '1 millisecond')))
        ORDER BY id
        """,
        (cluster, epoch, orphan_after_ms),
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


def fingerprints_starting(conn: psycopg.Connection, cluster: str, prefix: str, limit: int = 2) -> list[str]:
    """Fingerprints of `cluster` that start with `prefix` (hex, so no LIKE wildcard), at most `limit`."""
    rows = conn.execute(
        "SELECT fingerprint FROM signals WHERE cluster = %s AND starts_with(fingerprint, %s) "
        "ORDER BY fingerprint LIMIT %s",
        (cluster, prefix, limit),
    ).fetchall()
    return [r[0] for r in rows]


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
        return iso_utc(value)
    if isinstance(value, Decimal):
        return str(value)
    return value
