"""The paper broker: a durable simulated account in PostgreSQL, shared by every replica.

It is a fencing-aware venue: an order is booked only in a transaction that first checks
the order's epoch (coordinator.fencing), and `paper_orders.tag` is unique per cluster. So a
deposed leader can never book, a tag is booked at most once, and the signal's outcome
commits in the same transaction as the booking.
"""

from __future__ import annotations

from decimal import Decimal

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from coordinator.errors import first_line
from coordinator.fencing import fenced
from engine.brokers.base import (
    Account,
    BrokerError,
    InTransaction,
    OrderRequest,
    OrderResult,
    Outcome,
    Position,
    VenueOrder,
)
from engine.model import OrderType, Side

BOOK_ORDER_SQL = """
INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, sl, tp, epoch, instance_id, state)
VALUES (%(cluster)s, %(tag)s, %(symbol)s, %(side)s, %(type)s, %(volume)s, %(price)s, %(sl)s, %(tp)s,
        %(epoch)s, %(instance)s, %(state)s)
ON CONFLICT (cluster, tag) DO NOTHING
RETURNING ticket
"""

OPEN_POSITION_SQL = """
INSERT INTO paper_positions (ticket, cluster, symbol, side, volume, price, sl, tp, tag)
VALUES (%(ticket)s, %(cluster)s, %(symbol)s, %(side)s, %(volume)s, %(price)s, %(sl)s, %(tp)s, %(tag)s)
"""

DEAL_SQL = "INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl) VALUES (%s, %s, %s, %s, %s, %s)"


class PaperBroker:
    name = "paper"
    fencing_aware = True
    records_in_transaction = True

    def __init__(
        self,
        pool: ConnectionPool,
        cluster: str,
        instance_id: str,
        initial_balance: Decimal = Decimal("100000"),
        currency: str = "USD",
    ) -> None:
        self._pool = pool
        self._cluster = cluster
        self._instance = instance_id
        self._initial_balance = initial_balance
        self._currency = currency

    def connect(self) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO paper_accounts (cluster, balance, currency) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (self._cluster, self._initial_balance, self._currency),
            )

    def close(self) -> None:
        pass

    def account(self) -> Account:
        with self._pool.connection() as conn:
            row = conn.execute(
                """
                SELECT a.balance, a.currency,
                       COALESCE((SELECT sum(pnl) FROM paper_deals d WHERE d.cluster = a.cluster
                                 AND d.at >= date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC')
                                             AT TIME ZONE 'UTC'), 0)
                FROM paper_accounts a WHERE a.cluster = %s
                """,
                (self._cluster,),
            ).fetchone()
        if row is None:
            raise BrokerError(f"paper account of cluster {self._cluster!r} does not exist")
        # No price feed: open positions are marked at their entry, so equity equals balance.
        return Account(balance=row[0], equity=row[0], currency=row[1], daily_pnl=row[2])

    def positions(self) -> list[Position]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT ticket, symbol, side, volume, price, sl, tp, tag FROM paper_positions "
                "WHERE cluster = %s AND closed_at IS NULL ORDER BY ticket",
                (self._cluster,),
            ).fetchall()
        return [Position(str(r[0]), r[1], Side(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def open_position_count(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM paper_positions WHERE cluster = %s AND closed_at IS NULL",
                (self._cluster,),
            ).fetchone()
        return int(row[0]) if row else 0

    def _venue_orders(self, where: str, params: tuple[object, ...], limit: int = 1000) -> list[VenueOrder]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"""
                SELECT o.ticket, o.tag, o.symbol, o.side, o.volume, o.price, o.state, o.epoch, o.placed_at,
                       p.closed_at
                FROM paper_orders o LEFT JOIN paper_positions p ON p.ticket = o.ticket
                WHERE o.cluster = %s {where} ORDER BY o.ticket DESC LIMIT {int(limit)}
                """,
                (self._cluster, *params),
            ).fetchall()
        return [
            VenueOrder(
                ticket=str(r[0]),
                tag=r[1],
                symbol=r[2],
                side=Side(r[3]),
                volume=r[4],
                price=r[5],
                state="pending" if r[6] == "pending" else ("history" if r[9] is not None else "position"),
                epoch=int(r[7]),
                at=r[8],
            )
            for r in rows
        ]

    def find_by_tag(self, tag: str) -> list[VenueOrder]:
        return self._venue_orders("AND o.tag = %s", (tag,))

    def orders(self) -> list[VenueOrder]:
        return self._venue_orders("", ())

    def send(self, req: OrderRequest, within: InTransaction | None = None) -> OrderResult:
        """Book the order under its epoch. EpochSuperseded propagates: the order was refused
        because its leader was deposed, which is not the venue's verdict on the trade."""
        try:
            with self._pool.connection() as conn:
                return self._book(conn, req, within)
        except psycopg_pool.PoolTimeout as e:
            raise BrokerError(f"paper broker: database unavailable: {e}") from None

    def _book(self, conn: psycopg.Connection, req: OrderRequest, within: InTransaction | None) -> OrderResult:
        try:
            with fenced(conn, self._cluster, req.epoch) as cur:
                params = {
                    "cluster": self._cluster,
                    "tag": req.tag,
                    "symbol": req.symbol,
                    "side": req.side.value,
                    "type": req.type.value,
                    "volume": req.volume,
                    "price": req.price,
                    "sl": req.sl,
                    "tp": req.tp,
                    "epoch": req.epoch,
                    "instance": self._instance,
                    "state": "filled" if req.type is OrderType.MARKET else "pending",
                }
                row = cur.execute(BOOK_ORDER_SQL, params).fetchone()
                if row is None:
                    # The tag is booked already: the venue answers with that order, never a second one.
                    existing = cur.execute(
                        "SELECT ticket, price FROM paper_orders WHERE cluster = %s AND tag = %s",
                        (self._cluster, req.tag),
                    ).fetchone()
                    assert existing is not None
                    result = OrderResult(Outcome.DONE, ref=str(existing[0]), detail="already booked", price=existing[1])
                else:
                    ticket = int(row[0])
                    if req.type is OrderType.MARKET:
                        cur.execute(OPEN_POSITION_SQL, {**params, "ticket": ticket})
                        cur.execute(DEAL_SQL, (self._cluster, ticket, "open", req.volume, req.price, 0))
                    result = OrderResult(Outcome.DONE, ref=str(ticket), detail="booked", price=req.price)
                if within is not None:
                    within(cur, result)
                return result
        except psycopg.OperationalError as e:
            # Lost mid-transaction or at COMMIT: the booking may or may not have committed.
            return OrderResult(Outcome.UNKNOWN, detail=f"paper broker: {first_line(e)}")

    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None) -> OrderResult:
        with self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE paper_positions SET sl = COALESCE(%s, sl), tp = COALESCE(%s, tp) "
                "WHERE cluster = %s AND ticket = %s AND closed_at IS NULL RETURNING ticket",
                (sl, tp, self._cluster, int(ticket)),
            ).fetchone()
        if row is None:
            return OrderResult(Outcome.REJECTED, detail=f"no open position {ticket}")
        return OrderResult(Outcome.DONE, ref=ticket)

    def close_position(self, ticket: str, epoch: int | None = None) -> OrderResult:
        """Close at the entry price (no price feed). Fenced when an epoch is given."""
        with self._pool.connection() as conn:
            if epoch is not None:
                ctx = fenced(conn, self._cluster, epoch)
            else:
                ctx = conn.transaction()
            with ctx:
                row = conn.execute(
                    "UPDATE paper_positions SET closed_at = clock_timestamp(), close_price = price, pnl = 0 "
                    "WHERE cluster = %s AND ticket = %s AND closed_at IS NULL RETURNING volume, price",
                    (self._cluster, int(ticket)),
                ).fetchone()
                if row is None:
                    return OrderResult(Outcome.REJECTED, detail=f"no open position {ticket}")
                conn.execute(DEAL_SQL, (self._cluster, int(ticket), "close", row[0], row[1], 0))
        return OrderResult(Outcome.DONE, ref=ticket, price=row[1])
