"""Plans in PostgreSQL (trade_plans, pattern_history, news_events).

A plan's status only moves by compare-and-set: pending -> executing (the execution, fenced by
the leader's epoch, in the transaction that inserts its signal), pending -> cancelled (any
replica, for a user), pending -> expired (the leader, fenced), and executing -> executed |
failed by the trigger on its signal (migration 0006), in the transaction that settles the
signal, whoever settles it. An edit is a compare-and-set on the revision, so an evaluation
made on an older revision never executes.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine import intake
from engine.market.base import utc
from engine.plans.conditions.base import NewsEvent, Pattern
from engine.plans.model import Plan
from engine.signal import fingerprint
from engine.store import _jsonable

CREATE_SQL = """
INSERT INTO trade_plans (cluster, plan_id, schema_version, plan, expires_at, created_by)
VALUES (%(cluster)s, %(plan_id)s, %(version)s, %(plan)s, %(expires_at)s, %(instance)s)
ON CONFLICT (cluster, plan_id) DO NOTHING
RETURNING revision, status
"""

EXISTING_SQL = "SELECT revision, status, plan FROM trade_plans WHERE cluster = %s AND plan_id = %s"

SHOW_SQL = """
SELECT p.plan_id, p.revision, p.status, p.schema_version, p.plan, p.expires_at, p.created_by,
       p.created_at, p.updated_at, p.signal_fingerprint, p.executed_epoch, p.detail, p.reason,
       p.evaluated_at, s.status AS signal_status, s.broker_ref
FROM trade_plans p
LEFT JOIN signals s ON s.cluster = p.cluster AND s.fingerprint = p.signal_fingerprint
WHERE p.cluster = %s AND p.plan_id = %s
"""

LIST_SQL = """
SELECT plan_id, revision, status, expires_at, created_at, updated_at, signal_fingerprint, detail, evaluated_at
FROM trade_plans WHERE cluster = %s AND (%s::text IS NULL OR status = %s)
ORDER BY created_at DESC, id DESC LIMIT %s
"""

CANCEL_SQL = """
UPDATE trade_plans SET status = 'cancelled', detail = %(detail)s, updated_at = clock_timestamp()
WHERE cluster = %(cluster)s AND plan_id = %(plan_id)s AND status = 'pending'
RETURNING revision
"""

EDIT_SQL = """
UPDATE trade_plans SET revision = revision + 1, plan = %(plan)s, schema_version = %(version)s,
       expires_at = %(expires_at)s, reason = NULL, evaluated_at = NULL, updated_at = clock_timestamp()
WHERE cluster = %(cluster)s AND plan_id = %(plan_id)s AND status = 'pending' AND revision = %(revision)s
RETURNING revision
"""

# Every pending plan past its expires_at -> expired (fenced by the leader's epoch).
EXPIRE_DUE_SQL = """
UPDATE trade_plans SET status = 'expired', detail = 'expired before its conditions held',
       updated_at = clock_timestamp()
WHERE cluster = %s AND status = 'pending' AND expires_at <= statement_timestamp()
RETURNING plan_id
"""

PENDING_SQL = """
SELECT plan_id, revision, plan FROM trade_plans
WHERE cluster = %s AND status = 'pending' AND (expires_at IS NULL OR expires_at > statement_timestamp())
ORDER BY id
"""

# The execution's compare-and-set: only the revision that was evaluated, only while pending
# and unexpired (one statement_timestamp for both). The signal is inserted in the same
# transaction, which the caller fences by its epoch.
EXECUTE_SQL = """
UPDATE trade_plans SET status = 'executing', signal_fingerprint = %(fingerprint)s,
       executed_epoch = %(epoch)s, reason = %(reason)s, evaluated_at = clock_timestamp(),
       detail = 'conditions held', updated_at = clock_timestamp()
WHERE cluster = %(cluster)s AND plan_id = %(plan_id)s AND revision = %(revision)s AND status = 'pending'
  AND (expires_at IS NULL OR expires_at > statement_timestamp())
RETURNING id
"""

REASONS_SQL = """
UPDATE trade_plans p SET reason = r.reason::jsonb, evaluated_at = clock_timestamp()
FROM unnest(%(ids)s::text[], %(revisions)s::int[], %(reasons)s::text[]) AS r(plan_id, revision, reason)
WHERE p.cluster = %(cluster)s AND p.plan_id = r.plan_id AND p.revision = r.revision AND p.status = 'pending'
"""

PATTERNS_SQL = """
INSERT INTO pattern_history (cluster, symbol, timeframe, kind, bar_at, confirmed_at, params)
SELECT %(cluster)s, * FROM unnest(%(symbols)s::text[], %(timeframes)s::text[], %(kinds)s::text[],
       %(bars)s::timestamptz[], %(confirmed)s::timestamptz[], %(params)s::jsonb[])
ON CONFLICT (cluster, symbol, timeframe, kind, bar_at) DO NOTHING
RETURNING id
"""

PATTERN_CLEANUP_SQL = (
    "DELETE FROM pattern_history WHERE cluster = %s AND recorded_at < clock_timestamp() - %s * interval '1 second'"
)
PATTERN_COUNT_SQL = "SELECT count(*) FROM pattern_history WHERE cluster = %s"
# Integrity: a confirmation before its bar is refused by the CHECK; what else can go wrong is
# a row recorded "in the future" (a clock mishap), which a causal detector cannot produce.
PATTERN_SUSPECT_SQL = (
    "SELECT count(*) FROM pattern_history WHERE cluster = %s AND confirmed_at > clock_timestamp() + interval '1 minute'"
)

NEWS_INSERT_SQL = """
INSERT INTO news_events (at, currency, impact, title, source)
SELECT * FROM unnest(%(at)s::timestamptz[], %(currency)s::text[], %(impact)s::text[], %(title)s::text[],
                     %(source)s::text[])
ON CONFLICT (at, currency, title) DO NOTHING
RETURNING id
"""

NEWS_BETWEEN_SQL = """
SELECT (EXTRACT(EPOCH FROM at) * 1000)::bigint, currency, impact, title FROM news_events
WHERE at >= to_timestamp(%s / 1000.0) AND at <= to_timestamp(%s / 1000.0) ORDER BY at
"""


class Created(enum.Enum):
    CREATED = "created"
    SAME = "same"  # the plan_id exists with this very plan: the retry of a create
    CONFLICT = "conflict"  # the plan_id exists with another plan


@dataclass(frozen=True)
class CreateResult:
    outcome: Created
    plan_id: str
    revision: int
    status: str


def new_plan_id() -> str:
    return f"p-{uuid.uuid4().hex[:16]}"


def create(conn: psycopg.Connection, cluster: str, instance: str, plan_id: str | None, plan: Plan) -> CreateResult:
    """Store a pending plan (one committed statement); `plan_id` None: one is assigned."""
    pid = plan_id or new_plan_id()
    stored = plan.to_json()
    row = conn.execute(
        CREATE_SQL,
        {
            "cluster": cluster,
            "plan_id": pid,
            "version": plan.schema_version,
            "plan": json.dumps(stored),
            "expires_at": plan.expires_at,
            "instance": instance,
        },
    ).fetchone()
    if row is not None:
        return CreateResult(Created.CREATED, pid, int(row[0]), str(row[1]))
    existing = conn.execute(EXISTING_SQL, (cluster, pid)).fetchone()
    assert existing is not None  # plans are never deleted
    same = existing[2] == json.loads(json.dumps(stored))
    return CreateResult(Created.SAME if same else Created.CONFLICT, pid, int(existing[0]), str(existing[1]))


def show(conn: psycopg.Connection, cluster: str, plan_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(SHOW_SQL, (cluster, plan_id)).fetchone()
    return None if row is None else _jsonable(row)


def list_plans(conn: psycopg.Connection, cluster: str, status: str | None, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(LIST_SQL, (cluster, status, status, limit)).fetchall()
    return [_jsonable(r) for r in rows]


class Cancelled(enum.Enum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    TOO_LATE = "too_late"  # it executed (or expired, or was cancelled) first: the row says which


def cancel(conn: psycopg.Connection, cluster: str, plan_id: str, actor: str) -> tuple[Cancelled, dict[str, Any] | None]:
    """pending -> cancelled by compare-and-set; otherwise the plan as it is (with its order)."""
    with conn.transaction():
        row = conn.execute(CANCEL_SQL, {"cluster": cluster, "plan_id": plan_id, "detail": f"cancelled by {actor}"})
        done = row.fetchone() is not None
        current = show(conn, cluster, plan_id)
    if current is None:
        return Cancelled.NOT_FOUND, None
    return (Cancelled.CANCELLED if done else Cancelled.TOO_LATE), current


def edit(conn: psycopg.Connection, cluster: str, plan_id: str, revision: int, plan: Plan) -> int | None:
    """A new revision of a pending plan, by compare-and-set on the revision the editor read;
    the new revision, or None when the plan is not pending at that revision any more."""
    with conn.transaction():
        row = conn.execute(
            EDIT_SQL,
            {
                "cluster": cluster,
                "plan_id": plan_id,
                "revision": revision,
                "plan": json.dumps(plan.to_json()),
                "version": plan.schema_version,
                "expires_at": plan.expires_at,
            },
        ).fetchone()
    return None if row is None else int(row[0])


def expire_due(cur: psycopg.Cursor, cluster: str) -> list[str]:
    """pending -> expired past expires_at; the caller fences the transaction."""
    return [r[0] for r in cur.execute(EXPIRE_DUE_SQL, (cluster,)).fetchall()]


@dataclass(frozen=True)
class Pending:
    plan_id: str
    revision: int
    plan: dict[str, Any]


def pending(conn: psycopg.Connection, cluster: str) -> list[Pending]:
    return [Pending(r[0], int(r[1]), r[2]) for r in conn.execute(PENDING_SQL, (cluster,)).fetchall()]


def execute(
    conn: psycopg.Connection,
    cur: psycopg.Cursor,
    cluster: str,
    instance: str,
    epoch: int,
    plan_id: str,
    revision: int,
    plan: Plan,
    reason: dict[str, Any],
) -> str | None:
    """pending -> executing and the plan's signal inserted, in the caller's transaction fenced
    by `epoch` (`Fencing.fenced(conn)`): the signal's fingerprint, or None when the CAS lost
    (cancelled, edited, expired or executed meanwhile) and nothing was written."""
    intent = plan.signal_intent(plan_id, revision)
    fp = fingerprint(intent)
    row = cur.execute(
        EXECUTE_SQL,
        {
            "cluster": cluster,
            "plan_id": plan_id,
            "revision": revision,
            "fingerprint": fp,
            "epoch": epoch,
            "reason": json.dumps(reason),
        },
    ).fetchone()
    if row is None:
        return None
    intake.accept_intent(conn, cluster, instance, intent)
    return fp


def record_reasons(cur: psycopg.Cursor, cluster: str, reasons: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
    """The latest reason vector of each still-pending plan revision (fenced by the caller)."""
    batch = list(reasons)
    if batch:
        cur.execute(
            REASONS_SQL,
            {
                "cluster": cluster,
                "ids": [b[0] for b in batch],
                "revisions": [b[1] for b in batch],
                "reasons": [json.dumps(b[2]) for b in batch],
            },
        )


def record_patterns(cur: psycopg.Cursor, cluster: str, patterns: Iterable[Pattern]) -> int:
    """Each confirmed pattern once (the unique constraint); returns how many were new."""
    batch = list(patterns)
    if not batch:
        return 0
    rows = cur.execute(
        PATTERNS_SQL,
        {
            "cluster": cluster,
            "symbols": [p.symbol for p in batch],
            "timeframes": [p.timeframe.name for p in batch],
            "kinds": [p.kind for p in batch],
            "bars": [utc(p.bar_ms) for p in batch],
            "confirmed": [utc(p.confirmed_ms) for p in batch],
            "params": [json.dumps(dict(p.params), default=str) for p in batch],
        },
    ).fetchall()
    return len(rows)


def cleanup_patterns(cur: psycopg.Cursor, cluster: str, keep_s: int) -> int:
    """Retention: delete pattern_history rows recorded more than `keep_s` ago."""
    return cur.execute(PATTERN_CLEANUP_SQL, (cluster, keep_s)).rowcount


def count_patterns(conn: psycopg.Connection, cluster: str) -> tuple[int, int]:
    """(rows, rows confirmed in the future: a sign of a clock or detector fault)."""
    total = conn.execute(PATTERN_COUNT_SQL, (cluster,)).fetchone()
    suspect = conn.execute(PATTERN_SUSPECT_SQL, (cluster,)).fetchone()
    return int(total[0]) if total else 0, int(suspect[0]) if suspect else 0


def import_news(conn: psycopg.Connection, events: list[tuple[datetime, str, str, str, str]]) -> int:
    """(at, currency, impact, title, source) rows; an event already there is kept as it is.
    Returns how many were new."""
    if not events:
        return 0
    with conn.transaction():
        rows = conn.execute(
            NEWS_INSERT_SQL,
            {
                "at": [e[0] for e in events],
                "currency": [e[1] for e in events],
                "impact": [e[2] for e in events],
                "title": [e[3] for e in events],
                "source": [e[4] for e in events],
            },
        ).fetchall()
    return len(rows)


def news_between(conn: psycopg.Connection, from_ms: int, to_ms: int) -> list[NewsEvent]:
    return [NewsEvent(int(r[0]), r[1], r[2], r[3]) for r in conn.execute(NEWS_BETWEEN_SQL, (from_ms, to_ms))]


# Cancelled or expired plans that have a signal: the CAS makes this impossible, and the
# monitoring checks it stays so (haexec_plan_executions_after_cancel).
AFTER_CANCEL_SQL = """
SELECT count(*) FROM trade_plans p
JOIN signals s ON s.cluster = p.cluster AND s.source = 'plan' AND split_part(s.signal_id, ':', 1) = p.plan_id
WHERE p.cluster = %s AND p.status IN ('cancelled', 'expired')
"""

PENDING_KEYS_SQL = """
SELECT plan_id, revision, expires_at FROM trade_plans
WHERE cluster = %s AND status = 'pending' ORDER BY id
"""

PLANS_BY_ID_SQL = (
    "SELECT plan_id, revision, plan FROM trade_plans WHERE cluster = %s AND plan_id = ANY(%s) AND status = 'pending'"
)


def executions_after_cancel(conn: psycopg.Connection, cluster: str) -> int:
    row = conn.execute(AFTER_CANCEL_SQL, (cluster,)).fetchone()
    return int(row[0]) if row else 0


def pending_keys(conn: psycopg.Connection, cluster: str) -> dict[str, tuple[int, datetime | None]]:
    """plan_id -> (revision, expires_at) of every pending plan: what the leader compares with
    what it holds, to load only new and edited plans."""
    return {r[0]: (int(r[1]), r[2]) for r in conn.execute(PENDING_KEYS_SQL, (cluster,))}


def plans_by_id(conn: psycopg.Connection, cluster: str, plan_ids: list[str]) -> list[Pending]:
    return [Pending(r[0], int(r[1]), r[2]) for r in conn.execute(PLANS_BY_ID_SQL, (cluster, plan_ids))]
