"""The operator audit (`operator_audit`): who did what to the cluster and why, append-only
and hash-chained.

`record` is called with the cursor of the action's own transaction, so an action and its
audit row commit together or not at all. Each row's hash is sha256 over the previous row's
hash and the row's canonical encoding (`canonical`): rewriting a row (the table's trigger
refuses UPDATE and DELETE; a superuser can disable it), removing one or slipping one in
breaks the chain at that row, and `verify` names it.

One chain per cluster. Two concurrent actions cannot fork it: `record` takes a
transaction-scoped advisory lock on the cluster's chain before it reads the head, so the
second waits for the first to commit and then chains onto it; and UNIQUE (cluster,
prev_hash) refuses a second row after the same head even from a writer that skipped the
lock. The lock is held until the action's transaction ends, so actions of one cluster are
serialised for that long -- operator actions are rare, and the sessions' lock_timeout
bounds the wait.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from common.timefmt import iso_utc

GENESIS = "0" * 64  # the first row's prev_hash

# The advisory lock's key: the chain's name hashed into PostgreSQL's 64-bit key space.
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('haexec:operator_audit:' || %s, 0))"
HEAD_SQL = "SELECT hash FROM operator_audit WHERE cluster = %s ORDER BY id DESC LIMIT 1"
NOW_SQL = "SELECT clock_timestamp()"
INSERT_SQL = """
INSERT INTO operator_audit (cluster, at, actor, action, reason, detail, prev_hash, hash)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id
"""
CHAIN_SQL = """
SELECT id, cluster, at, actor, action, reason, detail, prev_hash, hash
FROM operator_audit WHERE cluster = %s ORDER BY id
"""
LIST_SQL = """
SELECT id, cluster, at, actor, action, reason, detail, prev_hash, hash
FROM operator_audit WHERE cluster = %s ORDER BY id DESC LIMIT %s
"""


@dataclass(frozen=True)
class Entry:
    id: int
    cluster: str
    at: datetime
    actor: str
    action: str
    reason: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": iso_utc(self.at),
            "actor": self.actor,
            "action": self.action,
            "reason": self.reason,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: how many rows it checked and the first broken one, if any."""

    entries: int
    broken_id: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_id is None


def canonical(cluster: str, at: datetime, actor: str, action: str, reason: str | None, detail: Any) -> bytes:
    """One byte string per row: sorted keys, no whitespace, ASCII only, the time in UTC to
    the microsecond (what timestamptz keeps), so the hash recomputes exactly from the
    stored row."""
    return json.dumps(
        {
            "cluster": cluster,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": actor,
            "action": action,
            "reason": reason,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


def chain_hash(prev_hash: str, row: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + row).hexdigest()


def record(
    cur: psycopg.Cursor[Any],
    cluster: str,
    action: str,
    actor: str,
    reason: str | None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Append an operator action to the cluster's chain, in the caller's transaction; its id."""
    # Round-trip the detail through JSON first: what is hashed is what jsonb gives back.
    body = json.loads(json.dumps(detail or {}, default=str))
    cur.execute(LOCK_SQL, (cluster,))
    head = cur.execute(HEAD_SQL, (cluster,)).fetchone()
    prev = head[0] if head is not None else GENESIS
    row = cur.execute(NOW_SQL).fetchone()
    assert row is not None
    at: datetime = row[0]
    digest = chain_hash(prev, canonical(cluster, at, actor, action, reason, body))
    inserted = cur.execute(INSERT_SQL, (cluster, at, actor, action, reason, Jsonb(body), prev, digest)).fetchone()
    assert inserted is not None
    return int(inserted[0])


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(*row)


def verify(conn: psycopg.Connection[Any], cluster: str) -> Verdict:
    """Walk the cluster's chain from its first row; the first row whose prev_hash is not its
    predecessor's hash, or whose hash is not that of its contents, is broken."""
    prev = GENESIS
    count = 0
    with conn.cursor() as cur:
        for row in cur.execute(CHAIN_SQL, (cluster,)):
            e = _entry(row)
            count += 1
            if e.prev_hash != prev:
                if prev == GENESIS:
                    return Verdict(count, e.id, "its prev_hash is not the start of the chain (rows before it are gone)")
                return Verdict(
                    count,
                    e.id,
                    "its prev_hash is not the hash of the row before it "
                    "(that row was rewritten, or a row was removed or inserted)",
                )
            if chain_hash(e.prev_hash, canonical(e.cluster, e.at, e.actor, e.action, e.reason, e.detail)) != e.hash:
                return Verdict(count, e.id, "its hash does not match its contents (the row was rewritten)")
            prev = e.hash
    return Verdict(count)


def latest(conn: psycopg.Connection[Any], cluster: str, limit: int) -> list[Entry]:
    """The cluster's latest `limit` entries, newest first."""
    return [_entry(r) for r in conn.execute(LIST_SQL, (cluster, limit)).fetchall()]
