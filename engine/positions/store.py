"""plan_execution_state and trade_journal: every statement on them.

A registration is a fact anyone may record (any replica answers POST /trades, as any
replica takes a signal); the unique (cluster, account, ticket) makes concurrent identical
requests one row. Everything the manager changes (stops, state, naked, adoption) is a
leader write: the caller passes the cursor of its fenced transaction (`Fencing.fenced`),
and the journal row is written in that same transaction. A close seen at the venue is a
fact and is recorded even by a replica that just lost leadership.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from engine.model import Side

COLUMNS = (
    "ticket, symbol, side, entry, initial_sl, volume, source, fingerprint, rules, trailing_mode_enabled,"
    " trailing_activation_rr, current_rr, high_water, desired_sl, sent_sl, verified_sl, state, managed,"
    " naked_since, closed_at, updated_at"
)

REGISTER_SQL = f"""
INSERT INTO plan_execution_state (cluster, account, ticket, symbol, side, entry, initial_sl, volume, source,
                                  fingerprint, rules, trailing_mode_enabled, trailing_activation_rr)
VALUES (%(cluster)s, %(account)s, %(ticket)s, %(symbol)s, %(side)s, %(entry)s, %(initial_sl)s, %(volume)s,
        %(source)s, %(fingerprint)s, %(rules)s, false, %(activation)s)
ON CONFLICT (cluster, account, ticket) DO NOTHING
RETURNING {COLUMNS}
"""
# An unregistered position registered again is managed again, under the rules given now.
REMANAGE_SQL = f"""
UPDATE plan_execution_state SET managed = true, rules = %(rules)s, trailing_activation_rr = %(activation)s
WHERE cluster = %(cluster)s AND account = %(account)s AND ticket = %(ticket)s AND NOT managed AND closed_at IS NULL
RETURNING {COLUMNS}
"""
ONE_SQL = f"SELECT {COLUMNS} FROM plan_execution_state WHERE cluster = %s AND account = %s AND ticket = %s"
LIST_SQL = f"""
SELECT {COLUMNS} FROM plan_execution_state
WHERE cluster = %(cluster)s AND account = %(account)s AND (%(all)s OR (managed AND closed_at IS NULL))
ORDER BY id
"""
# The book's versions: a loop re-reads in full only the rows someone else changed.
VERSIONS_SQL = """
SELECT ticket, updated_at FROM plan_execution_state
WHERE cluster = %s AND account = %s AND managed AND closed_at IS NULL
"""
SOME_SQL = f"""
SELECT {COLUMNS} FROM plan_execution_state
WHERE cluster = %s AND account = %s AND managed AND closed_at IS NULL AND ticket = ANY(%s)
"""
# Every ticket ever registered that is not closed (managed or not): the manager adopts
# none of these again.
KNOWN_SQL = "SELECT ticket FROM plan_execution_state WHERE cluster = %s AND account = %s AND closed_at IS NULL"
UNREGISTER_SQL = """
UPDATE plan_execution_state SET managed = false
WHERE cluster = %s AND account = %s AND ticket = %s AND managed AND closed_at IS NULL RETURNING ticket
"""
# One statement for every position a loop changed: stops, state and its mirrored columns.
# The rows travel as one JSON array (a loop may change hundreds: one parameter to encode,
# not ten arrays of hundreds).
SAVE_SQL = """
UPDATE plan_execution_state p SET
    desired_sl = u.desired_sl, sent_sl = u.sent_sl, verified_sl = u.verified_sl, state = u.state,
    trailing_mode_enabled = u.trail_on, current_rr = u.current_rr, high_water = u.high_water,
    volume = u.volume, naked_since = CASE WHEN u.naked THEN COALESCE(p.naked_since, clock_timestamp()) END
FROM jsonb_to_recordset(%(rows)s::jsonb) AS u(ticket text, desired_sl numeric, sent_sl numeric, verified_sl numeric,
                                             state jsonb, trail_on boolean, current_rr numeric, high_water numeric,
                                             volume numeric, naked boolean)
WHERE p.cluster = %(cluster)s AND p.account = %(account)s AND p.ticket = u.ticket AND p.closed_at IS NULL
RETURNING p.ticket, p.updated_at
"""
CLOSE_SQL = """
UPDATE plan_execution_state SET closed_at = COALESCE(%s, clock_timestamp())
WHERE cluster = %s AND account = %s AND ticket = %s AND closed_at IS NULL RETURNING ticket
"""
JOURNAL_SQL = """
INSERT INTO trade_journal (cluster, ticket, kind, epoch, instance, detail)
SELECT %(cluster)s, j.ticket, j.kind, %(epoch)s, %(instance)s, j.detail
FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS e(row, n),
     jsonb_to_record(e.row) AS j(ticket text, kind text, detail jsonb)
ORDER BY e.n
"""
JOURNAL_READ_SQL = """
SELECT id, ticket, kind, epoch, instance, detail, at FROM trade_journal
WHERE cluster = %s AND ticket = %s ORDER BY id
"""
JOURNAL_SINCE_SQL = """
SELECT id, ticket, kind, epoch, instance, detail, at FROM trade_journal
WHERE cluster = %s AND at >= %s ORDER BY id LIMIT %s
"""
# The signals a venue position's tag may belong to, and the manage block each came with.
# Positions opened by a plan's signal whose plan is cancelled, expired or gone. The plans'
# compare-and-set makes them impossible; the plan loop's recovery looks for them.
PLAN_ORPHANS_SQL = """
SELECT e.account, e.ticket, split_part(s.signal_id, ':', 1), p.status, e.closed_at IS NULL
FROM plan_execution_state e
JOIN signals s ON s.cluster = e.cluster AND s.fingerprint = e.fingerprint AND s.source = 'plan'
LEFT JOIN trade_plans p ON p.cluster = e.cluster AND p.plan_id = split_part(s.signal_id, ':', 1)
WHERE e.cluster = %s AND (p.status IS NULL OR p.status IN ('cancelled', 'expired'))
ORDER BY e.id
"""
REMOVE_CLOSED_SQL = (
    "DELETE FROM plan_execution_state WHERE cluster = %s AND account = %s AND ticket = %s AND closed_at IS NOT NULL"
)
SIGNAL_SL_SQL = "SELECT payload ->> 'sl' FROM signals WHERE cluster = %s AND fingerprint = %s"
SIGNALS_BY_TAG_SQL = "SELECT tag, fingerprint, payload -> 'manage' FROM signals WHERE cluster = %s AND tag = ANY(%s)"


@dataclass(frozen=True)
class Managed:
    """A row of plan_execution_state."""

    ticket: str
    symbol: str
    side: Side
    entry: Decimal
    initial_sl: Decimal
    volume: Decimal
    source: str
    fingerprint: str | None
    rules: dict[str, Any]
    trailing_mode_enabled: bool
    trailing_activation_rr: Decimal | None
    current_rr: Decimal
    high_water: Decimal | None
    desired_sl: Decimal | None
    sent_sl: Decimal | None
    verified_sl: Decimal | None
    state: dict[str, Any]
    managed: bool
    naked_since: datetime | None
    closed_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> Managed:
        return cls(row[0], row[1], Side(row[2]), *row[3:])

    def as_json(self) -> dict[str, Any]:
        def num(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        def at(v: datetime | None) -> str | None:
            return None if v is None else v.isoformat()

        return {
            "ticket": self.ticket,
            "symbol": self.symbol,
            "side": self.side.value,
            "entry": num(self.entry),
            "initial_sl": num(self.initial_sl),
            "volume": num(self.volume),
            "source": self.source,
            "fingerprint": self.fingerprint,
            "manage": self.rules,
            "trailing_mode_enabled": self.trailing_mode_enabled,
            "trailing_activation_rr": num(self.trailing_activation_rr),
            "current_rr": num(self.current_rr),
            "high_water": num(self.high_water),
            "desired_sl": num(self.desired_sl),
            "sent_sl": num(self.sent_sl),
            "verified_sl": num(self.verified_sl),
            "state": self.state,
            "managed": self.managed,
            "naked_since": at(self.naked_since),
            "closed_at": at(self.closed_at),
            "updated_at": at(self.updated_at),
        }


@dataclass(frozen=True)
class NewPosition:
    """What registration stores: the venue position and its rules (a JSON object)."""

    ticket: str
    symbol: str
    side: Side
    entry: Decimal
    initial_sl: Decimal
    volume: Decimal
    source: str  # signal | api
    rules: Mapping[str, Any]
    fingerprint: str | None = None
    activation_rr: Decimal | None = None


@dataclass(frozen=True)
class Entry:
    """One trade_journal row to write."""

    ticket: str
    kind: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class Saved:
    """A position's new stops and state, as one loop leaves them."""

    ticket: str
    desired_sl: Decimal | None
    sent_sl: Decimal | None
    verified_sl: Decimal | None
    state: Mapping[str, Any]
    trailing: bool
    current_rr: Decimal
    high_water: Decimal | None
    volume: Decimal
    naked: bool


class Registered(Exception):
    """The ticket is registered already, under other rules (HTTP 409)."""

    def __init__(self, existing: Managed) -> None:
        super().__init__(f"ticket {existing.ticket} is registered already with other rules")
        self.existing = existing


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_jsonable, separators=(",", ":"))


def activation_of(rules: Mapping[str, Any]) -> Decimal | None:
    """The trailing activation of a stored (canonical) manage block, mirrored in its column."""
    trailing = rules.get("trailing")
    raw = trailing.get("activation_rr") if isinstance(trailing, Mapping) else None
    return None if raw is None else Decimal(str(raw))


def register(
    cur: psycopg.Cursor, cluster: str, account: str, new: NewPosition, journal: tuple[int | None, str, str]
) -> tuple[Managed, bool]:
    """(the row, True) when this call registered it (or managed an unregistered one again);
    (the row, False) for the same registration again; Registered for the ticket under other
    rules. `journal` is (epoch or None, instance, kind) of the row written with a new one."""
    params = {
        "cluster": cluster,
        "account": account,
        "ticket": new.ticket,
        "symbol": new.symbol,
        "side": new.side.value,
        "entry": new.entry,
        "initial_sl": new.initial_sl,
        "volume": new.volume,
        "source": new.source,
        "fingerprint": new.fingerprint,
        "rules": dumps(new.rules),
        "activation": new.activation_rr if new.activation_rr is not None else activation_of(new.rules),
    }
    row = cur.execute(REGISTER_SQL, params).fetchone()
    if row is None:
        row = cur.execute(REMANAGE_SQL, params).fetchone()
    if row is not None:
        epoch, instance, kind = journal
        write_journal(
            cur, cluster, epoch, instance, [Entry(new.ticket, kind, {"source": new.source, **params_of(new)})]
        )
        return Managed.of(row), True
    existing = cur.execute(ONE_SQL, (cluster, account, new.ticket)).fetchone()
    assert existing is not None  # the conflict that refused the insert is this row (never deleted)
    managed = Managed.of(existing)
    if managed.rules != json.loads(dumps(new.rules)) or not managed.managed:
        raise Registered(managed)
    return managed, False


def params_of(new: NewPosition) -> dict[str, Any]:
    return {"rules": dict(new.rules), "initial_sl": str(new.initial_sl), "fingerprint": new.fingerprint}


def one(conn: psycopg.Connection | psycopg.Cursor, cluster: str, account: str, ticket: str) -> Managed | None:
    row = conn.execute(ONE_SQL, (cluster, account, ticket)).fetchone()
    return None if row is None else Managed.of(row)


def listing(conn: psycopg.Connection, cluster: str, account: str, include_closed: bool = False) -> list[Managed]:
    rows = conn.execute(LIST_SQL, {"cluster": cluster, "account": account, "all": include_closed}).fetchall()
    return [Managed.of(r) for r in rows]


def load_changed(
    conn: psycopg.Connection | psycopg.Cursor, cluster: str, account: str, cached: Mapping[str, Managed]
) -> list[Managed]:
    """The open, managed book, reusing the cached rows whose version (updated_at) is unchanged."""
    versions = conn.execute(VERSIONS_SQL, (cluster, account)).fetchall()
    stale = [t for t, at in versions if t not in cached or cached[t].updated_at != at]
    fresh = {r[0]: Managed.of(r) for r in conn.execute(SOME_SQL, (cluster, account, stale))} if stale else {}
    book = [fresh.get(t) or cached[t] for t, _ in versions if t in fresh or t not in stale]
    return sorted(book, key=lambda m: m.ticket)


def known_tickets(conn: psycopg.Connection | psycopg.Cursor, cluster: str, account: str) -> set[str]:
    return {r[0] for r in conn.execute(KNOWN_SQL, (cluster, account)).fetchall()}


def unregister(cur: psycopg.Cursor, cluster: str, account: str, ticket: str, epoch: int | None, instance: str) -> bool:
    """Stop managing (the stop stays at the venue). False when it was not managed."""
    row = cur.execute(UNREGISTER_SQL, (cluster, account, ticket)).fetchone()
    if row is not None:
        write_journal(cur, cluster, epoch, instance, [Entry(ticket, "unregistered", {})])
    return row is not None


def save(cur: psycopg.Cursor, cluster: str, account: str, rows: Iterable[Saved]) -> dict[str, datetime]:
    """Each saved row's new version (updated_at)."""
    rows = list(rows)
    if not rows:
        return {}
    payload = [
        {
            "ticket": r.ticket,
            "desired_sl": r.desired_sl,
            "sent_sl": r.sent_sl,
            "verified_sl": r.verified_sl,
            "state": r.state,
            "trail_on": r.trailing,
            "current_rr": r.current_rr,
            "high_water": r.high_water,
            "volume": r.volume,
            "naked": r.naked,
        }
        for r in rows
    ]
    done = cur.execute(SAVE_SQL, {"cluster": cluster, "account": account, "rows": dumps(payload)}).fetchall()
    return {t: at for t, at in done}


def close(
    cur: psycopg.Cursor,
    cluster: str,
    account: str,
    ticket: str,
    at: datetime | None,
    epoch: int | None,
    instance: str,
    detail: Mapping[str, Any],
) -> bool:
    """Record a close the venue made or reported (once: False when it was recorded already)."""
    row = cur.execute(CLOSE_SQL, (at, cluster, account, ticket)).fetchone()
    if row is not None:
        write_journal(cur, cluster, epoch, instance, [Entry(ticket, "close", detail)])
    return row is not None


@dataclass(frozen=True)
class PlanOrphan:
    account: str
    ticket: str
    plan_id: str
    status: str | None  # cancelled, expired, or None: no such plan
    open: bool


def plan_orphans(cur: psycopg.Cursor, cluster: str) -> list[PlanOrphan]:
    return [PlanOrphan(r[0], r[1], r[2], r[3], bool(r[4])) for r in cur.execute(PLAN_ORPHANS_SQL, (cluster,))]


def remove_closed(cur: psycopg.Cursor, cluster: str, account: str, ticket: str) -> bool:
    """Delete a closed position's row (its journal stays); False when it is open or absent."""
    return cur.execute(REMOVE_CLOSED_SQL, (cluster, account, ticket)).rowcount == 1


def write_journal(cur: psycopg.Cursor, cluster: str, epoch: int | None, instance: str, entries: list[Entry]) -> None:
    if not entries:
        return
    rows = [{"ticket": e.ticket, "kind": e.kind, "detail": e.detail} for e in entries]
    cur.execute(JOURNAL_SQL, {"cluster": cluster, "epoch": epoch, "instance": instance, "rows": dumps(rows)})


def journal(conn: psycopg.Connection, cluster: str, ticket: str) -> list[dict[str, Any]]:
    return [_journal_row(r) for r in conn.execute(JOURNAL_READ_SQL, (cluster, ticket)).fetchall()]


def journal_since(conn: psycopg.Connection, cluster: str, since: datetime, limit: int) -> list[dict[str, Any]]:
    """Every position's journal from `since` on, oldest first (`haexec journal`)."""
    return [_journal_row(r) for r in conn.execute(JOURNAL_SINCE_SQL, (cluster, since, limit)).fetchall()]


def _journal_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": r[0],
        "ticket": r[1],
        "kind": r[2],
        "epoch": r[3],
        "instance": r[4],
        "detail": r[5],
        "at": r[6].isoformat(),
    }


def signals_by_tag(
    conn: psycopg.Connection | psycopg.Cursor, cluster: str, tags: list[str]
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """tag -> (fingerprint, the signal's manage block or None)."""
    if not tags:
        return {}
    return {r[0]: (r[1], r[2]) for r in conn.execute(SIGNALS_BY_TAG_SQL, (cluster, tags)).fetchall()}
