"""The gateway's write-ahead journal: one SQLite row per order_send, written before it.

On the terminal's worker, immediately before order_send: (sequence, call, attempt, op, epoch,
instance, tag, digest, the request as sent), committed with synchronous=FULL (WAL) so it is
on disk before the terminal sees the order. As soon as order_send returns: retcode, order,
deal, volume, price, comment, or the error. A row still `sending` when the gateway starts
belonged to a process that died mid-send: it becomes `interrupted`, an unknown outcome.

What the journal answers (`tag_state`): a tag's calls, and what they mean for a new send of
it -- `done` (an order went through: answer that, never send the tag again), `in_flight`
(a call has not returned), `unknown` (a call got no answer: it may have executed; the tag is
not sent again), `rejected` (every call was refused by the terminal: nothing was placed),
or `none`. An answer is rebuilt from the recorded fields with the adapter's own mapping
(engine.brokers.mt5.send_result), so a replay says what the first answer said.

Floats the terminal saw are kept as their repr, so no digit is lost or invented.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from engine.brokers.base import OrderResult, Outcome
from engine.brokers.gateway_wire import Fence
from engine.brokers.mt5 import DONE_RETCODES, MODIFY_DONE_RETCODES, send_result

log = logging.getLogger("haexec.gateway.journal")

FILE = "journal.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    call         TEXT NOT NULL,      -- one broker call (a send and its requote retries)
    attempt      INTEGER NOT NULL,   -- 1, 2, ... within the call
    op           TEXT NOT NULL,      -- send, modify, close, cancel
    tag          TEXT,               -- a send's tag
    target       TEXT,               -- the ticket a modify, close or cancel acts on
    digest       TEXT NOT NULL,      -- SHA-256 of what the call asked (gateway_wire)
    cluster      TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    instance     TEXT NOT NULL,
    request      TEXT NOT NULL,      -- the order_send request, JSON, floats as repr strings
    state        TEXT NOT NULL,      -- sending, answered, failed, interrupted
    retcode      INTEGER,
    order_ticket INTEGER,
    deal         INTEGER,
    volume       TEXT,
    price        TEXT,
    comment      TEXT,
    err_code     INTEGER,
    err_text     TEXT,
    raised       TEXT,
    sent_at      TEXT NOT NULL,
    answered_at  TEXT
);
CREATE INDEX IF NOT EXISTS sends_tag ON sends (tag) WHERE tag IS NOT NULL;
CREATE INDEX IF NOT EXISTS sends_call ON sends (call);
"""

COLUMNS = (
    "seq, call, attempt, op, tag, target, digest, cluster, epoch, instance, request, state, retcode, "
    "order_ticket, deal, volume, price, comment, err_code, err_text, raised, sent_at, answered_at"
)

# Pruning (haexec/gateway/prune.py runs it): whole calls only, settled ones only (every attempt
# answered, none with an unknown outcome), answered before the cutoff, and never a call under
# the highest epoch the journal holds (the promise's floor at start-up). Call ids are visited
# in order, each once.
PRUNE_CANDIDATES = (
    "SELECT DISTINCT call FROM sends WHERE state IN ('answered', 'failed') AND answered_at < ? "
    "AND epoch < (SELECT max(epoch) FROM sends) AND call > ? ORDER BY call LIMIT ?"
)
PRUNE_CALL = "DELETE FROM sends WHERE call = ?"
PRUNE_BATCH = 500  # calls per transaction: a send waiting for the journal waits for one batch at most


class JournalError(Exception):
    """The journal could not be written or read; a send that needs it is not made."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _plain(request: dict[str, Any]) -> str:
    return json.dumps({k: repr(v) if isinstance(v, float) else v for k, v in request.items()}, sort_keys=True)


@dataclass(frozen=True)
class Attempt:
    seq: int
    call: str
    attempt: int
    op: str
    tag: str | None
    target: str | None
    digest: str
    cluster: str
    epoch: int
    instance: str
    request: dict[str, Any]
    state: str
    retcode: int | None
    order_ticket: int | None
    deal: int | None
    volume: str | None
    price: str | None
    comment: str | None
    err_code: int | None
    err_text: str | None
    raised: str | None
    sent_at: str
    answered_at: str | None

    def result(self) -> OrderResult | None:
        """What this order_send meant, or None while it has not returned."""
        if self.state == "sending":
            return None
        if self.state == "interrupted":
            return OrderResult(
                Outcome.UNKNOWN,
                detail=f"the gateway stopped during order_send (journal seq {self.seq}); it may have executed",
            )
        if self.raised is not None:
            return OrderResult(Outcome.UNKNOWN, detail=f"order_send raised {self.raised}")
        if self.state == "failed":
            return send_result(None, (self.err_code or 0, self.err_text or ""), self.request, DONE_RETCODES)
        res = SimpleNamespace(
            retcode=self.retcode,
            deal=self.deal or 0,
            order=self.order_ticket or 0,
            volume=float(self.volume or 0),
            price=float(self.price or 0),
            comment=self.comment or "",
        )
        done = MODIFY_DONE_RETCODES if self.op == "modify" else DONE_RETCODES
        return send_result(res, None, self.request, done, refusals=self.op != "send")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "seq",
                "attempt",
                "state",
                "retcode",
                "order_ticket",
                "deal",
                "volume",
                "price",
                "comment",
                "err_code",
                "err_text",
                "raised",
                "sent_at",
                "answered_at",
            )
        }
        out["request"] = self.request
        return out


@dataclass(frozen=True)
class Call:
    """One broker call: its order_sends, oldest first."""

    attempts: list[Attempt]

    @property
    def first(self) -> Attempt:
        return self.attempts[0]

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    @property
    def in_flight(self) -> bool:
        return self.last.state == "sending"

    def result(self) -> OrderResult | None:
        return self.last.result()

    def as_json(self) -> dict[str, Any]:
        first = self.first
        result = self.result()
        return {
            "call": first.call,
            "op": first.op,
            "tag": first.tag,
            "target": first.target,
            "digest": first.digest,
            "fence": {"cluster": first.cluster, "epoch": first.epoch, "instance": first.instance},
            "in_flight": self.in_flight,
            "outcome": result.outcome.value if result else None,
            "ref": result.ref if result else None,
            "detail": result.detail if result else None,
            "attempts": [a.as_json() for a in self.attempts],
        }


@dataclass(frozen=True)
class TagState:
    kind: str  # none, done, in_flight, unknown, rejected
    call: Call | None = None  # the call that decides it (the latest one for `rejected`)
    calls: list[Call] = field(default_factory=list)


class Journal:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._rows = 0

    def open(self) -> int:
        """Open (creating it), mark rows left `sending` by a dead process `interrupted`.
        Returns how many were."""
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # every commit is on disk when it returns
            db.executescript(SCHEMA)
            interrupted = db.execute(
                "UPDATE sends SET state = 'interrupted', answered_at = ? WHERE state = 'sending'", (_now(),)
            ).rowcount
            self._rows = int(db.execute("SELECT count(*) FROM sends").fetchone()[0])
        except sqlite3.Error as e:
            raise JournalError(f"cannot open the journal {self.path}: {e}") from None
        self._db = db
        return interrupted

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError("the journal is closed")
        return self._db

    @property
    def rows(self) -> int:
        return self._rows

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += (self.path.parent / (self.path.name + suffix)).stat().st_size
            except OSError:
                pass
        return total

    def begin(
        self,
        call: str,
        attempt: int,
        op: str,
        fence: Fence,
        digest: str,
        request: dict[str, Any],
        tag: str | None = None,
        target: str | None = None,
    ) -> int:
        """The write-ahead row, durable when this returns. Raises JournalError."""
        with self._lock:
            try:
                cur = self._conn().execute(
                    "INSERT INTO sends (call, attempt, op, tag, target, digest, cluster, epoch, instance, request, "
                    "state, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'sending', ?)",
                    (
                        call,
                        attempt,
                        op,
                        tag,
                        target,
                        digest,
                        fence.cluster,
                        fence.epoch,
                        fence.instance,
                        _plain(request),
                        _now(),
                    ),
                )
            except sqlite3.Error as e:
                raise JournalError(f"journal write failed: {e}") from None
            self._rows += 1
            assert cur.lastrowid is not None
            return cur.lastrowid

    def answered(self, seq: int, res: Any, err: tuple[int, str] | None, raised: BaseException | None) -> None:
        """What order_send did. Raises JournalError (the caller logs it: the answer stands)."""
        if raised is not None:
            fields: dict[str, Any] = {"state": "failed", "raised": f"{type(raised).__name__}: {raised}"}
        elif res is None:
            code, text = err or (0, "")
            fields = {"state": "failed", "err_code": code, "err_text": text}
        else:
            fields = {
                "state": "answered",
                "retcode": int(res.retcode),
                "order_ticket": int(getattr(res, "order", 0) or 0),
                "deal": int(getattr(res, "deal", 0) or 0),
                "volume": repr(float(getattr(res, "volume", 0.0) or 0.0)),
                "price": repr(float(getattr(res, "price", 0.0) or 0.0)),
                "comment": str(getattr(res, "comment", "") or ""),
            }
        fields["answered_at"] = _now()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            try:
                self._conn().execute(f"UPDATE sends SET {assignments} WHERE seq = ?", (*fields.values(), seq))
            except sqlite3.Error as e:
                raise JournalError(f"journal write failed: {e}") from None

    def _select(self, where: str, params: tuple[Any, ...], limit: int = -1) -> list[Attempt]:
        sql = f"SELECT {COLUMNS} FROM sends {where} ORDER BY seq LIMIT ?"
        with self._lock:
            try:
                rows = self._conn().execute(sql, (*params, limit)).fetchall()
            except sqlite3.Error as e:
                raise JournalError(f"journal read failed: {e}") from None
        out = []
        for r in rows:
            values = list(r)
            values[10] = json.loads(values[10])
            out.append(Attempt(*values))
        return out

    def calls(self, tag: str) -> list[Call]:
        """Every call that sent `tag`, oldest first."""
        grouped: dict[str, list[Attempt]] = {}
        for a in self._select("WHERE tag = ?", (tag,)):
            grouped.setdefault(a.call, []).append(a)
        return [Call(attempts) for attempts in grouped.values()]

    def tag_state(self, tag: str) -> TagState:
        calls = self.calls(tag)
        if not calls:
            return TagState("none")
        for kind, pick in (
            ("done", lambda c: (r := c.result()) is not None and r.outcome is Outcome.DONE),
            ("in_flight", lambda c: c.in_flight),
            ("unknown", lambda c: (r := c.result()) is not None and r.outcome is Outcome.UNKNOWN),
        ):
            hit = next((c for c in calls if pick(c)), None)
            if hit is not None:
                return TagState(kind, hit, calls)
        return TagState("rejected", calls[-1], calls)

    def sending(self) -> Attempt | None:
        """The order_send on the terminal now, if any (the oldest, should there be more)."""
        rows = self._select("WHERE state = 'sending'", (), limit=1)
        return rows[0] if rows else None

    def highest_fence(self) -> tuple[int, str] | None:
        """The highest (epoch, instance) any row was sent under."""
        rows = self._select("WHERE epoch = (SELECT max(epoch) FROM sends)", (), limit=1)
        return (rows[0].epoch, rows[0].instance) if rows else None

    def prune(self, before: datetime) -> int:
        """Delete the settled calls answered before `before` (see PRUNE_CANDIDATES); how many
        rows went. A call with an unknown outcome is kept, whatever its age. Raises JournalError."""
        cutoff = before.astimezone(UTC).isoformat(timespec="milliseconds")
        removed = 0
        after = ""
        while True:
            with self._lock:
                try:
                    batch = [c for (c,) in self._conn().execute(PRUNE_CANDIDATES, (cutoff, after, PRUNE_BATCH))]
                except sqlite3.Error as e:
                    raise JournalError(f"journal read failed: {e}") from None
            if not batch:
                return removed
            after = batch[-1]
            doomed = [c for c in batch if _settled_before(self._select("WHERE call = ?", (c,)), cutoff)]
            with self._lock:
                db = self._conn()
                try:
                    db.execute("BEGIN IMMEDIATE")
                    gone = sum(db.execute(PRUNE_CALL, (c,)).rowcount for c in doomed)
                    db.execute("COMMIT")
                except sqlite3.Error as e:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise JournalError(f"journal prune failed: {e}") from None
                self._rows -= gone
            removed += gone


def _settled_before(attempts: list[Attempt], cutoff: str) -> bool:
    """Every attempt of the call answered before `cutoff`, none with an unknown outcome."""
    for a in attempts:
        if a.answered_at is None or a.answered_at >= cutoff:
            return False
        result = a.result()
        if result is None or result.outcome is Outcome.UNKNOWN:
            return False
    return True
