"""The venue's book in PostgreSQL: loading it, applying a match in one transaction, the
account's marks and the tick cursor, and the one lock that makes a venue the only one.

Every match is one transaction that locks its row and applies only to the row it was
decided on: a replica's modify and a stop-out of the same position serialise on that
lock, whichever commits first wins, and the other sees its result (a stop moved out of
the way no longer triggers; a modify of a position already closed finds no open position).

- A close (stop loss, take profit, stop-out) is one statement: an UPDATE of the position
  that holds only while it is open with the side, volume, price, stop and take profit the
  venue decided on -- a compare-and-set, the row locked by the UPDATE itself, re-checked
  on the committed row when it had to wait for a replica's modify -- which also moves the
  balance and writes the deal with the balance after it. When the row was not as decided,
  it is read and decided again (the same pure functions, engine.venue.matching). One round
  trip instead of four (BEGIN, SELECT ... FOR UPDATE, the close, COMMIT) is most of the
  tick-to-stop-fill time (bench/venue.py).
- A fill or an expiry locks the pending order (`SELECT ... FOR UPDATE`), decides again on
  it and writes, in one transaction; a replica's cancel waits for it or wins before it.

One venue per cluster: the writer holds a session-level advisory lock
(`pg_try_advisory_lock`, key `haexec-venue:<cluster>`) on the very connection it writes
through, so a venue whose connection died can no longer write, and a second venue waits
for the lock and takes over as soon as the first one's session ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

import psycopg

from engine.model import Side
from engine.venue.matching import OPEN, Permissions, close_match, order_trigger, position_trigger
from engine.venue.model import Action, Kind, Match, Order, Position, Quote
from engine.venue.pnl import Contract, Mark

NOTIFY_CHANNEL = "haexec_paper_book"
LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended('haexec-venue:' || %s, 0))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended('haexec-venue:' || %s, 0))"
_MS = "floor(extract(epoch FROM {}) * 1000)::bigint"

POSITIONS_SQL = f"""
SELECT ticket, symbol, side, volume, price, sl, tp, {_MS.format("opened_at")}, closed_at IS NULL
FROM paper_positions WHERE cluster = %(c)s AND {{where}}
"""
# The order's own expiry, else (until PaperBroker books it into the column) its signal's.
ORDERS_SQL = f"""
SELECT o.ticket, o.symbol, o.side, o.type, o.volume, o.price, o.sl, o.tp, {_MS.format("o.placed_at")},
       {_MS.format("COALESCE(o.expires_at, s.expires_at)")}, o.state = 'pending'
FROM paper_orders o LEFT JOIN signals s ON s.cluster = o.cluster AND s.tag = o.tag
WHERE o.cluster = %(c)s AND {{where}}
"""

LOCK_POSITION_SQL = (
    "SELECT ticket, symbol, side, volume, price, sl, tp FROM paper_positions"
    " WHERE cluster = %s AND ticket = %s AND closed_at IS NULL FOR UPDATE"
)
LOCK_ORDER_SQL = f"""
SELECT o.ticket, o.symbol, o.side, o.type, o.volume, o.price, o.sl, o.tp, 0,
       {_MS.format("COALESCE(o.expires_at, s.expires_at)")}, true
FROM paper_orders o LEFT JOIN signals s ON s.cluster = o.cluster AND s.tag = o.tag
WHERE o.cluster = %s AND o.ticket = %s AND o.state = 'pending' FOR UPDATE OF o
"""

READ_POSITION_SQL = (
    "SELECT ticket, symbol, side, volume, price, sl, tp FROM paper_positions"
    " WHERE cluster = %s AND ticket = %s AND closed_at IS NULL"
)

# A close in one statement: the position (only as it was decided on: the compare-and-set),
# the balance, the deal with the balance after it.
CLOSE_SQL = """
WITH closed AS (
    UPDATE paper_positions SET closed_at = clock_timestamp(), close_price = %(price)s, pnl = %(pnl)s,
                               close_reason = %(kind)s
    WHERE cluster = %(c)s AND ticket = %(ticket)s AND closed_at IS NULL
      AND side = %(side)s AND volume = %(volume)s AND price = %(open)s
      AND sl IS NOT DISTINCT FROM %(sl)s::numeric AND tp IS NOT DISTINCT FROM %(tp)s::numeric
    RETURNING ticket, volume
), account AS (
    UPDATE paper_accounts SET balance = balance + %(pnl)s
    WHERE cluster = %(c)s AND EXISTS (SELECT 1 FROM closed)
    RETURNING balance
)
INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl, balance, quote_ms)
SELECT %(c)s, closed.ticket, %(kind)s, closed.volume, %(price)s, %(pnl)s, account.balance, %(q)s
FROM closed, account
RETURNING balance
"""

# Part of a position closed in one statement: the position's volume reduced (only as it was
# decided on), the balance moved by the part's realised P&L, a 'partial' deal for the part.
PARTIAL_SQL = """
WITH reduced AS (
    UPDATE paper_positions SET volume = volume - %(part)s
    WHERE cluster = %(c)s AND ticket = %(ticket)s AND closed_at IS NULL AND volume = %(volume)s AND volume > %(part)s
    RETURNING ticket
), account AS (
    UPDATE paper_accounts SET balance = balance + %(pnl)s
    WHERE cluster = %(c)s AND EXISTS (SELECT 1 FROM reduced)
    RETURNING balance
)
INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl, balance, quote_ms)
SELECT %(c)s, reduced.ticket, 'partial', %(part)s, %(price)s, %(pnl)s, account.balance, %(q)s
FROM reduced, account
RETURNING balance
"""

FILL_SQL = """
WITH filled AS (
    UPDATE paper_orders SET state = 'filled', done_at = clock_timestamp(), fill_price = %(price)s
    WHERE cluster = %(c)s AND ticket = %(ticket)s AND state = 'pending'
    RETURNING ticket, cluster, symbol, side, volume, sl, tp, tag
), opened AS (
    INSERT INTO paper_positions (ticket, cluster, symbol, side, volume, price, sl, tp, tag)
    SELECT ticket, cluster, symbol, side, volume, %(price)s, sl, tp, tag FROM filled
)
INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl, quote_ms)
SELECT cluster, ticket, 'fill', volume, %(price)s, 0, %(q)s FROM filled
RETURNING ticket
"""

EXPIRE_SQL = (
    "UPDATE paper_orders SET state = 'expired', done_at = clock_timestamp()"
    " WHERE cluster = %s AND ticket = %s AND state = 'pending' RETURNING ticket"
)

MARK_SQL = """
INSERT INTO paper_marks AS m (cluster, balance, floating, equity, margin, free_margin, margin_level, leverage,
                              positions, quote_ms, venue)
SELECT a.cluster, a.balance, %(f)s, a.balance + %(f)s, %(m)s, a.balance + %(f)s - %(m)s,
       CASE WHEN %(m)s > 0 THEN round((a.balance + %(f)s) / %(m)s * 100, 2) END,
       %(lev)s, %(n)s, %(q)s, %(venue)s
FROM paper_accounts a WHERE a.cluster = %(c)s
ON CONFLICT (cluster) DO UPDATE SET
    balance = EXCLUDED.balance, floating = EXCLUDED.floating, equity = EXCLUDED.equity, margin = EXCLUDED.margin,
    free_margin = EXCLUDED.free_margin, margin_level = EXCLUDED.margin_level, leverage = EXCLUDED.leverage,
    positions = EXCLUDED.positions, quote_ms = EXCLUDED.quote_ms, venue = EXCLUDED.venue,
    marked_at = clock_timestamp()
RETURNING balance
"""

CURSOR_SQL = """
INSERT INTO paper_venue_cursor AS k (cluster, symbol, tick_ms)
SELECT %(c)s, s, t FROM unnest(%(symbols)s::text[], %(ticks)s::bigint[]) AS u(s, t)
ON CONFLICT (cluster, symbol) DO UPDATE
SET tick_ms = GREATEST(k.tick_ms, EXCLUDED.tick_ms), updated_at = clock_timestamp()
"""

READ_MARK_SQL = f"""
SELECT balance, floating, equity, margin, free_margin, margin_level, leverage, positions, quote_ms, venue,
       marked_at, {_MS.format("clock_timestamp() - marked_at")}
FROM paper_marks WHERE cluster = %s
"""


def _position(row: tuple, since_ms: int) -> Position:
    return Position(int(row[0]), row[1], Side(row[2]), row[3], row[4], row[5], row[6], since_ms)


def lock_order(cur: psycopg.Cursor, cluster: str, ticket: int) -> tuple[bool, Order | None]:
    """A pending order, locked until the transaction ends: (False, None) when there is none,
    (True, None) for one of a type the venue does not fill."""
    row = cur.execute(LOCK_ORDER_SQL, (cluster, ticket)).fetchone()
    return (False, None) if row is None else (True, _order(row, 0))


def _order(row: tuple, since_ms: int) -> Order | None:
    try:
        kind = Kind(row[3])
    except ValueError:  # a type the venue does not fill (a 'market' row is filled at booking)
        return None
    return Order(int(row[0]), row[1], Side(row[2]), kind, row[4], row[5], row[6], row[7], since_ms, row[9])


@dataclass(frozen=True)
class Loaded:
    """Rows read from the book: open positions and pending orders, each `since_ms` the time
    (database clock, epoch ms) it was created, and the tickets no longer open or pending."""

    positions: list[Position]
    orders: list[Order]
    gone_positions: list[int]
    gone_orders: list[int]


def load(
    conn: psycopg.Connection, cluster: str, positions: Iterable[int] | None = None, orders: Iterable[int] | None = None
) -> Loaded:
    """The whole open book (no tickets given), or the rows of the tickets given."""
    out = Loaded([], [], [], [])
    whole = positions is None and orders is None
    for sql, tickets, live_col in ((POSITIONS_SQL, positions, 8), (ORDERS_SQL, orders, 10)):
        if whole:
            where = "closed_at IS NULL" if sql is POSITIONS_SQL else "o.state = 'pending'"
            params: dict[str, object] = {"c": cluster}
        else:
            wanted = sorted(set(tickets or ()))
            if not wanted:
                continue
            where = "ticket = ANY(%(t)s)" if sql is POSITIONS_SQL else "o.ticket = ANY(%(t)s)"
            params = {"c": cluster, "t": wanted}
        for row in conn.execute(sql.format(where=where), params).fetchall():
            created = int(row[7] if sql is POSITIONS_SQL else row[8])
            if sql is POSITIONS_SQL:
                if row[live_col]:
                    out.positions.append(_position(row, created))
                else:
                    out.gone_positions.append(int(row[0]))
            else:
                order = _order(row, created) if row[live_col] else None
                if order is not None:
                    out.orders.append(order)
                else:
                    out.gone_orders.append(int(row[0]))
    return out


def try_lock(conn: psycopg.Connection, cluster: str) -> bool:
    row = conn.execute(LOCK_SQL, (cluster,)).fetchone()
    return bool(row and row[0])


def ensure_account(conn: psycopg.Connection, cluster: str, balance: Decimal, currency: str) -> None:
    conn.execute(
        "INSERT INTO paper_accounts (cluster, balance, currency) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (cluster, balance, currency),
    )


def balance(conn: psycopg.Connection, cluster: str) -> Decimal:
    row = conn.execute("SELECT balance FROM paper_accounts WHERE cluster = %s", (cluster,)).fetchone()
    if row is None:
        raise LookupError(f"paper account of cluster {cluster!r} does not exist")
    return Decimal(row[0])


@dataclass(frozen=True)
class Applied:
    """What a match came to under the row's lock: `match` as booked (None: nothing to do any
    more), the row as it stands when it no longer matched (to refresh the book), and the
    balance after a close."""

    match: Match | None
    position: Position | None = None
    order: Order | None = None
    balance: Decimal | None = None


def close(cur: psycopg.Cursor | psycopg.Connection, cluster: str, m: Match, held: Position) -> Decimal | None:
    """Book a close (`m` from close_match or position_trigger, decided on `held`): the row,
    the balance and the deal, in one statement. The balance after it, or None when the
    position is not open as `held` (nothing written)."""
    row = cur.execute(
        CLOSE_SQL,
        {
            "c": cluster,
            "ticket": m.ticket,
            "price": m.price,
            "pnl": m.pnl,
            "kind": m.action.value,
            "q": m.time_ms,
            "side": held.side.value,
            "volume": held.volume,
            "open": held.price,
            "sl": held.sl,
            "tp": held.tp,
        },
    ).fetchone()
    return None if row is None else Decimal(row[0])


def close_position(
    cur: psycopg.Cursor,
    cluster: str,
    ticket: int,
    quote: Quote,
    contract: Contract,
    action: Action = Action.CLOSE,
) -> tuple[Match, Decimal] | None:
    """Close an open position at `quote` (a buy at the bid, a sell at the ask) with its
    realised P&L, inside the caller's transaction (PaperBroker's fenced one): locks the row,
    books the close, moves the balance, writes the deal. None when it is not open."""
    row = cur.execute(LOCK_POSITION_SQL, (cluster, ticket)).fetchone()
    if row is None:
        return None
    held = _position(row, 0)
    m = close_match(held, quote, contract, action)
    after = close(cur, cluster, m, held)
    return None if after is None else (m, after)


def close_part(
    cur: psycopg.Cursor, cluster: str, ticket: int, volume: Decimal, quote: Quote, contract: Contract
) -> tuple[Match, Decimal] | None:
    """Close `volume` lots of an open position at `quote` (its exit price), leaving the rest
    open: the part's realised P&L moves the balance, a 'partial' deal records it, inside the
    caller's transaction. None when it is not open or `volume` is not less than its volume."""
    row = cur.execute(LOCK_POSITION_SQL, (cluster, ticket)).fetchone()
    if row is None:
        return None
    held = _position(row, 0)
    if not volume < held.volume:
        return None
    m = close_match(replace(held, volume=volume), quote, contract)  # the part, at the exit price
    done = cur.execute(
        PARTIAL_SQL,
        {
            "c": cluster,
            "ticket": ticket,
            "part": volume,
            "volume": held.volume,
            "price": m.price,
            "pnl": m.pnl,
            "q": m.time_ms,
        },
    ).fetchone()
    return None if done is None else (m, Decimal(done[0]))


CLOSE_ATTEMPTS = 3


def apply(
    conn: psycopg.Connection,
    cluster: str,
    m: Match,
    quote: Quote | None,
    contract: Contract,
    allow: Permissions = OPEN,
    held: Position | None = None,
) -> Applied:
    """Book one match, deciding again on the row when it is not as `held` (the position as
    the venue's book has it; closes only)."""
    if m.action.closes:
        assert quote is not None
        return _apply_close(conn, cluster, m, quote, contract, allow, held)
    with conn.transaction(), conn.cursor() as cur:
        row = cur.execute(LOCK_ORDER_SQL, (cluster, m.ticket)).fetchone()
        if row is None:
            return Applied(None)
        o = _order(row, 0)
        if o is None:
            return Applied(None)
        if m.action is Action.EXPIRE:
            done = cur.execute(EXPIRE_SQL, (cluster, m.ticket)).fetchone()
            return Applied(m if done else None)
        assert quote is not None
        again = order_trigger(o, quote, allow)
        if again is None or again.action is not Action.FILL:
            return Applied(None, order=o)
        filled = cur.execute(FILL_SQL, {"c": cluster, "ticket": m.ticket, "price": again.price, "q": again.time_ms})
        return Applied(again if filled.fetchone() else None)


def _decide(p: Position, m: Match, quote: Quote, contract: Contract, allow: Permissions) -> Match | None:
    if m.action is Action.STOP_OUT:  # the account's decision: the position's stops do not enter it
        return close_match(p, quote, contract, Action.STOP_OUT)
    again = position_trigger(p, quote, contract, allow)
    return again if again is not None and again.action is m.action else None


def _apply_close(
    conn: psycopg.Connection,
    cluster: str,
    m: Match,
    quote: Quote,
    contract: Contract,
    allow: Permissions,
    held: Position | None,
) -> Applied:
    decided: Match | None = m
    for _ in range(CLOSE_ATTEMPTS):
        if held is not None and decided is not None:
            after = close(conn, cluster, decided, held)  # autocommit: one statement, one transaction
            if after is not None:
                return Applied(decided, balance=after)
        # not as decided on (a replica modified or closed it meanwhile): as it is now
        row = conn.execute(READ_POSITION_SQL, (cluster, m.ticket)).fetchone()
        if row is None:
            return Applied(None)
        held = _position(row, 0)
        decided = _decide(held, m, quote, contract, allow)
        if decided is None:
            return Applied(None, position=held)
    return Applied(None, position=held)  # it kept changing under us: the next quote decides


def write_mark(
    conn: psycopg.Connection, cluster: str, mark: Mark, leverage: int, quote_ms: int | None, venue: str
) -> Decimal | None:
    """The account snapshot: the balance as it stands now, the floating P&L and margin of
    the venue's book. Returns that balance (None without an account)."""
    row = conn.execute(
        MARK_SQL,
        {
            "c": cluster,
            "f": mark.floating,
            "m": mark.margin,
            "lev": leverage,
            "n": mark.positions,
            "q": quote_ms,
            "venue": venue,
        },
    ).fetchone()
    return None if row is None else Decimal(row[0])


def write_cursor(conn: psycopg.Connection, cluster: str, cursor: Mapping[str, int]) -> None:
    if cursor:
        symbols = sorted(cursor)
        conn.execute(CURSOR_SQL, {"c": cluster, "symbols": symbols, "ticks": [cursor[s] for s in symbols]})


def read_cursor(conn: psycopg.Connection, cluster: str) -> dict[str, int]:
    rows = conn.execute("SELECT symbol, tick_ms FROM paper_venue_cursor WHERE cluster = %s", (cluster,)).fetchall()
    return {r[0]: int(r[1]) for r in rows}


DEALS_SQL = """
SELECT id, ticket, kind, volume, price, pnl, balance, sl, tp, at FROM paper_deals
WHERE cluster = %s AND at >= %s ORDER BY id LIMIT %s
"""


@dataclass(frozen=True)
class Deal:
    id: int
    ticket: str
    kind: str  # fill, close, sl, tp, stop_out, modify, ...
    volume: Decimal
    price: Decimal
    pnl: Decimal
    balance: Decimal | None  # after the deal, on the deals that move it
    sl: Decimal | None
    tp: Decimal | None
    at: datetime


def deals(conn: psycopg.Connection, cluster: str, since: datetime, limit: int) -> list[Deal]:
    """The account's deals from `since` on, oldest first: the ledger an operator reads."""
    rows = conn.execute(DEALS_SQL, (cluster, since, limit)).fetchall()
    return [Deal(int(r[0]), str(r[1]), *r[2:]) for r in rows]


@dataclass(frozen=True)
class AccountMark:
    """The venue's latest snapshot of the account, with its age on the database's clock."""

    balance: Decimal
    floating: Decimal
    equity: Decimal
    margin: Decimal
    free_margin: Decimal
    margin_level: Decimal | None
    leverage: int
    positions: int
    quote_ms: int | None
    venue: str
    marked_at: datetime
    age_ms: int


def read_mark(conn: psycopg.Connection, cluster: str) -> AccountMark | None:
    """What PaperBroker.account() reads for equity and margin (README "The paper venue")."""
    row = conn.execute(READ_MARK_SQL, (cluster,)).fetchone()
    if row is None:
        return None
    return AccountMark(
        balance=row[0],
        floating=row[1],
        equity=row[2],
        margin=row[3],
        free_margin=row[4],
        margin_level=row[5],
        leverage=int(row[6]),
        positions=int(row[7]),
        quote_ms=None if row[8] is None else int(row[8]),
        venue=row[9],
        marked_at=row[10],
        age_ms=max(0, int(row[11])),
    )
