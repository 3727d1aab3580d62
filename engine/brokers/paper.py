"""The paper broker: a durable simulated account in PostgreSQL, shared by every replica.

It is a fencing-aware venue: an order is booked only in a transaction that first checks
the order's epoch (coordinator.fencing), and `paper_orders.tag` is unique per cluster. So a
deposed leader can never book, a tag is booked at most once, and the signal's outcome
commits in the same transaction as the booking.

Prices. With a `Market` (engine.market: the replica's sim, replay or mt5 source) a symbol's
quote is the market's spec (contract size, volume limits, tick value) and its latest bid and
ask, no older than `max_quote_age_ms`; a market order is booked at the ask (buy) or the bid
(sell) of the quote the risk rules priced it at (`OrderRequest.quoted`), never at the
signal's price. Without one, every symbol is 1 account currency per 1.0 of price per lot and
orders are booked at the signal's price. With a market and the venue's settings, an order is
also held to the venue's rules before it is booked (engine.venue.rules.check_open: hours,
trade mode, volume, stops level, a pending order's price level), so what the venue would
refuse is refused where it is made, and a quote states the margin a lot holds at the venue's
leverage. Marking and matching belong to the venue process.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from common.errors import first_line
from coordinator.fencing import fenced
from engine.brokers.base import (
    Account,
    BrokerError,
    InTransaction,
    OrderRequest,
    OrderResult,
    Outcome,
    Position,
    PositionDiff,
    Quote,
    Refusal,
    SymbolSpec,
    SymbolUnavailable,
    VenueOrder,
)
from engine.brokers.deals import ClosingDeal
from engine.market.base import FeedUnavailable, MarketDataError, StaleData, TradeMode, UnknownSymbol
from engine.market.service import Market
from engine.model import OrderType, Side
from engine.venue import ledger, rules
from engine.venue.model import Kind
from engine.venue.model import Order as PendingOrder
from engine.venue.model import Position as VenuePosition
from engine.venue.model import Quote as VenueQuote
from engine.venue.pnl import Contract
from engine.venue.settings import VenueSettings

DEFAULT_QUOTE_AGE_MS = 5000

# A whole batch in one statement: the orders (a tag booked already is skipped, never doubled;
# an order past its expires_at is not booked; a pending one keeps it, for the venue to expire
# it), and for market orders their positions and opening deals. The positions' foreign key to
# paper_orders is checked at the end of the statement, when the orders are there.
BOOK_ORDERS_SQL = """
WITH request AS (
    SELECT * FROM unnest(%(tags)s::text[], %(symbols)s::text[], %(sides)s::text[], %(types)s::text[],
                         %(volumes)s::numeric[], %(prices)s::numeric[], %(sls)s::numeric[], %(tps)s::numeric[],
                         %(expires)s::timestamptz[])
                  WITH ORDINALITY AS r(tag, symbol, side, type, volume, price, sl, tp, expires_at, n)
), booked AS (
    INSERT INTO paper_orders (cluster, tag, symbol, side, type, volume, price, sl, tp, epoch, instance_id, state,
                              expires_at)
    SELECT %(cluster)s, tag, symbol, side, type, volume, price, sl, tp, %(epoch)s, %(instance)s,
           CASE type WHEN 'market' THEN 'filled' ELSE 'pending' END, expires_at
    FROM request WHERE expires_at IS NULL OR expires_at > statement_timestamp() ORDER BY n
    ON CONFLICT (cluster, tag) DO NOTHING
    RETURNING ticket, tag, symbol, side, type, volume, price, sl, tp
), opened AS (
    INSERT INTO paper_positions (ticket, cluster, symbol, side, volume, price, sl, tp, tag)
    SELECT ticket, %(cluster)s, symbol, side, volume, price, sl, tp, tag FROM booked WHERE type = 'market'
), dealt AS (
    INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl)
    SELECT %(cluster)s, ticket, 'open', volume, price, 0 FROM booked WHERE type = 'market'
)
SELECT tag, ticket FROM booked
"""

# Reconciliation inside the database: the open book against broker_positions' open rows in
# one pass on the server, returning only what differs (and the count and duplicate tags), so
# a takeover with thousands of unchanged positions ships nothing but a few numbers.
POSITION_DIFF_SQL = """
WITH venue AS (
    SELECT ticket::text AS ticket, symbol, side, volume, price, sl, tp, tag
    FROM paper_positions WHERE cluster = %(cluster)s AND closed_at IS NULL
), known AS (
    SELECT ticket, symbol, side, volume FROM broker_positions
    WHERE cluster = %(cluster)s AND broker = %(broker)s AND state = 'open'
)
SELECT 'diff', v.ticket, v.symbol, v.side, v.volume, v.price, v.sl, v.tp, v.tag,
       k.ticket, k.symbol, k.side, k.volume
FROM venue v FULL JOIN known k ON k.ticket = v.ticket
WHERE v.ticket IS NULL OR k.ticket IS NULL OR (v.symbol, v.side, v.volume) IS DISTINCT FROM (k.symbol, k.side, k.volume)
UNION ALL
SELECT 'dup', NULL, NULL, NULL, NULL, NULL, NULL, NULL, tag, string_agg(ticket, ',' ORDER BY ticket), NULL, NULL, NULL
FROM venue WHERE tag IS NOT NULL GROUP BY tag HAVING count(*) > 1
UNION ALL
SELECT 'count', NULL, NULL, NULL, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM venue
"""

# The venue marks the book every HAEXEC_VENUE_MARK_MS (250 ms by default); a mark older than
# this is a venue that stopped, and is not used.
MARK_FRESH_MS = 2000

_PAPER_QUOTE = Quote(SymbolSpec(contract_size=Decimal(1)))

POSITION_SQL = (
    "SELECT symbol, side, volume, price, sl, tp FROM paper_positions"
    " WHERE cluster = %s AND ticket = %s AND closed_at IS NULL"
)
MODIFY_SQL = (
    "UPDATE paper_positions SET sl = COALESCE(%s, sl), tp = COALESCE(%s, tp)"
    " WHERE cluster = %s AND ticket = %s AND closed_at IS NULL AND sl IS NOT DISTINCT FROM %s"
    " AND tp IS NOT DISTINCT FROM %s RETURNING ticket"
)
POSITIONS_SQL = (
    "SELECT ticket, symbol, side, volume, price, sl, tp FROM paper_positions"
    " WHERE cluster = %s AND ticket = ANY(%s) AND closed_at IS NULL"
)
# The stops travel as one JSON array: a manager loop may move hundreds.
MODIFY_MANY_SQL = """
UPDATE paper_positions p SET sl = u.sl
FROM jsonb_to_recordset(%s::jsonb) AS u(ticket bigint, sl numeric, was numeric)
WHERE p.cluster = %s AND p.ticket = u.ticket AND p.closed_at IS NULL AND p.sl IS NOT DISTINCT FROM u.was
RETURNING p.ticket
"""
# The deal that closed a position (a close, a stop, a take profit or a stop-out), the latest.
CLOSING_DEAL_SQL = """
SELECT d.kind, d.volume, d.price, d.pnl, d.at FROM paper_deals d
JOIN paper_positions p ON p.cluster = d.cluster AND p.ticket = d.ticket AND p.closed_at IS NOT NULL
WHERE d.cluster = %s AND d.ticket = %s AND d.kind NOT IN ('open', 'modify') ORDER BY d.id DESC LIMIT 1
"""
# The venue's rules by what their refusal means to a caller.
MODIFY_REFUSALS = {"stops_level": Refusal.INVALID_STOPS, "freeze_level": Refusal.FROZEN}

DEAL_SQL = "INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl) VALUES (%s, %s, %s, %s, %s, %s)"


def _stops_json(send: list[tuple[str, Decimal, VenuePosition]]) -> str:
    rows = [{"ticket": int(t), "sl": str(sl), "was": None if p.sl is None else str(p.sl)} for t, sl, p in send]
    return json.dumps(rows)


def _no_order(ticket: str) -> OrderResult:
    return OrderResult(Outcome.REJECTED, detail=f"no pending order {ticket}", refusal=Refusal.GONE)


def _gone(ticket: str) -> OrderResult:
    return OrderResult(Outcome.REJECTED, detail=f"no open position {ticket}", refusal=Refusal.GONE)


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
        market: Market | None = None,
        max_quote_age_ms: int = DEFAULT_QUOTE_AGE_MS,
        venue: VenueSettings | None = None,
    ) -> None:
        if max_quote_age_ms < 0:
            raise ValueError("max_quote_age_ms must be >= 0")
        self._pool = pool
        self._cluster = cluster
        self._instance = instance_id
        self._initial_balance = initial_balance
        self._currency = currency
        # The prices orders fill at (see the module doc). A replica sets it once its market
        # is open, before the executor starts; None: the signal's price.
        self.market = market
        self.max_quote_age_ms = max_quote_age_ms
        self.venue = venue  # None: no venue rules at booking, no margin in quotes

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
            mark = ledger.read_mark(conn, self._cluster) if row is not None else None
        if row is None:
            raise BrokerError(f"paper account of cluster {self._cluster!r} does not exist")
        balance, currency, realised = row
        if mark is None or mark.age_ms > MARK_FRESH_MS:
            # No venue marking the book (none running, or it stalled): open positions at
            # entry, so equity is the balance. Never a stale mark taken for a current one.
            return Account(balance=balance, equity=balance, currency=currency, daily_pnl=realised)
        # The venue's mark: equity with the floating P&L, and today's loss counts the open
        # positions' too (the daily-loss rule must not wait for a stop to realise it).
        return Account(
            balance=balance,
            equity=balance + mark.floating,
            currency=currency,
            daily_pnl=realised + min(mark.floating, Decimal(0)),
            margin=mark.margin,
            free_margin=mark.free_margin,
        )

    def positions(self) -> list[Position]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT ticket, symbol, side, volume, price, sl, tp, tag FROM paper_positions "
                "WHERE cluster = %s AND closed_at IS NULL ORDER BY ticket",
                (self._cluster,),
            ).fetchall()
        return [Position(str(r[0]), r[1], Side(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def open_exposure(self) -> int:
        """Open positions and pending orders (a pending order can fill at any time)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM paper_positions WHERE cluster = %(c)s AND closed_at IS NULL)"
                " + (SELECT count(*) FROM paper_orders WHERE cluster = %(c)s AND state = 'pending')",
                {"c": self._cluster},
            ).fetchone()
        return int(row[0]) if row else 0

    def quote(self, symbol: str) -> Quote:
        """With a market: its spec of the symbol and its latest bid and ask. SymbolUnavailable
        (one line) for a symbol the market does not have, a tick older than max_quote_age_ms
        or a symbol whose trading is disabled: such a symbol is never traded at a default; a
        market that cannot be read is a BrokerError (the batch waits, nothing is refused).
        Without a market: every symbol is 1 account currency per 1.0 of price per lot, and an
        order is priced at the signal's price."""
        market = self.market
        if market is None:
            return _PAPER_QUOTE
        try:
            tick = market.tick(symbol, max_age_ms=self.max_quote_age_ms)
            spec = market.spec(symbol)
        except UnknownSymbol as e:
            raise SymbolUnavailable(first_line(e)) from None
        except StaleData as e:
            raise SymbolUnavailable(f"no fresh price for {symbol}: {first_line(e)}") from None
        except FeedUnavailable as e:
            raise BrokerError(f"paper broker: market data ({market.name}) unavailable: {first_line(e)}") from None
        except MarketDataError as e:
            raise SymbolUnavailable(f"{symbol}: {first_line(e)}") from None
        if spec.trade_mode is TradeMode.DISABLED:
            raise SymbolUnavailable(f"{symbol}: trading is disabled at the {market.name} source")
        margin = None
        if self.venue is not None:
            margin = Contract.of(spec, self._currency).margin(Decimal(1), tick.ask, self.venue.leverage)
        try:
            return Quote(SymbolSpec.from_market(spec), bid=tick.bid, ask=tick.ask, margin_per_lot=margin)
        except (TypeError, ValueError) as e:
            raise SymbolUnavailable(f"{symbol} has no usable spec at the {market.name} source: {e}") from None

    def _fill_prices(self, reqs: list[OrderRequest]) -> tuple[list[OrderRequest], dict[str, OrderResult]]:
        """Each order at the price it is booked at: a limit order at its own, a market order
        at the price it was quoted (`quoted`), or, when it comes without one at a broker with
        a market, at the ask or bid quoted now (an order that cannot be quoted is refused,
        not booked). Without a market, at the signal's price."""
        priced: list[OrderRequest] = []
        refused: dict[str, OrderResult] = {}
        quotes: dict[str, Quote | SymbolUnavailable] = {}
        for r in reqs:
            refusal = self._venue_refusal(r)
            if refusal is not None:
                refused[r.tag] = refusal
                continue
            if r.type is not OrderType.MARKET:
                priced.append(r)
                continue
            at = r.quoted
            if at is None and self.market is not None:
                if r.symbol not in quotes:
                    try:
                        quotes[r.symbol] = self.quote(r.symbol)
                    except SymbolUnavailable as e:
                        quotes[r.symbol] = e
                quote = quotes[r.symbol]
                if isinstance(quote, SymbolUnavailable):
                    refused[r.tag] = OrderResult(Outcome.REJECTED, detail=f"paper broker: {quote}")
                    continue
                at = quote.executable(r.side, r.type, r.price)
            priced.append(r if at is None else replace(r, price=at))
        return priced, refused

    def _venue_refusal(self, r: OrderRequest) -> OrderResult | None:
        """What the venue's rules say of the order at the current tick (check_open): None to
        book it. A market that cannot be read is a BrokerError: the batch waits."""
        venue, market = self.venue, self.market
        if venue is None or market is None:
            return None
        try:
            tick = market.tick(r.symbol, max_age_ms=self.max_quote_age_ms)
            spec = market.spec(r.symbol)
        except FeedUnavailable as e:
            raise BrokerError(f"paper broker: market data ({market.name}) unavailable: {first_line(e)}") from None
        except MarketDataError as e:
            return OrderResult(Outcome.REJECTED, detail=f"paper broker: {r.symbol}: {first_line(e)}")
        contract = Contract.of(spec, self._currency, venue.trade_mode(r.symbol, spec.trade_mode))
        kind = rules.MARKET if r.type is OrderType.MARKET else Kind.LIMIT
        refused = rules.check_open(
            contract,
            VenueQuote.of(tick),
            r.side,
            kind,
            r.volume,
            r.price,
            r.sl,
            r.tp,
            open_market=venue.hours.is_open(r.symbol, tick.time_ms),
        )
        return None if refused is None else OrderResult(Outcome.REJECTED, detail=f"paper venue {refused}")

    def position_diff(self, conn: psycopg.Connection) -> PositionDiff:
        """See POSITION_DIFF_SQL; `conn` is the reconciliation's own transaction."""
        rows = conn.execute(POSITION_DIFF_SQL, {"cluster": self._cluster, "broker": self.name}).fetchall()
        count, new, changed, vanished, dups = 0, [], [], [], {}
        for kind, ticket, symbol, side, volume, price, sl, tp, tag, k_ticket, k_symbol, k_side, k_volume in rows:
            if kind == "count":
                count = int(volume)
            elif kind == "dup":
                dups[tag] = k_ticket.split(",")
            elif ticket is None:
                vanished.append(k_ticket)
            else:
                p = Position(ticket, symbol, Side(side), volume, price, sl, tp, tag)
                if k_ticket is None:
                    new.append(p)
                else:
                    changed.append((p, (k_symbol, k_side, k_volume)))
        return PositionDiff(count, new, changed, sorted(vanished), dups)

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
                state=r[6] if r[6] == "pending" else ("position" if r[6] == "filled" and r[9] is None else "history"),
                epoch=int(r[7]),
                at=r[8],
            )
            for r in rows
        ]

    def find_by_tag(self, tag: str) -> list[VenueOrder]:
        return self._venue_orders("AND o.tag = %s", (tag,))

    def orders(self) -> list[VenueOrder]:
        return self._venue_orders("", ())

    def send(self, req: OrderRequest) -> OrderResult:
        return self.book([req])[0]

    def book(self, reqs: list[OrderRequest], within: InTransaction | None = None) -> list[OrderResult]:
        """Book the orders (all under one epoch) in one fenced transaction; `within(cur, results)`
        runs inside it, so the signals' outcomes commit with their orders. EpochSuperseded
        propagates: the orders were refused because their leader was deposed, which is not the
        venue's verdict on the trades."""
        epochs = {r.epoch for r in reqs}
        if len(epochs) != 1:
            raise ValueError(f"one booking is fenced by one epoch, got {sorted(epochs)}")
        priced, refused = self._fill_prices(reqs)
        try:
            with self._pool.connection() as conn:
                booked = self._book(conn, priced, epochs.pop(), within, refused, reqs)
        except psycopg_pool.PoolTimeout as e:
            raise BrokerError(f"paper broker: database unavailable: {e}") from None
        return booked

    def _book(
        self,
        conn: psycopg.Connection,
        reqs: list[OrderRequest],
        epoch: int,
        within: InTransaction | None,
        refused: dict[str, OrderResult],
        asked: list[OrderRequest],
    ) -> list[OrderResult]:
        """Book `reqs` (priced) in one fenced statement; the results follow `asked`, the orders
        as given, where those in `refused` were never booked."""
        try:
            with fenced(conn, self._cluster, epoch) as cur:
                rows = cur.execute(
                    BOOK_ORDERS_SQL,
                    {
                        "cluster": self._cluster,
                        "epoch": epoch,
                        "instance": self._instance,
                        "tags": [r.tag for r in reqs],
                        "symbols": [r.symbol for r in reqs],
                        "sides": [r.side.value for r in reqs],
                        "types": [r.type.value for r in reqs],
                        "volumes": [r.volume for r in reqs],
                        "prices": [r.price for r in reqs],
                        "sls": [r.sl for r in reqs],
                        "tps": [r.tp for r in reqs],
                        "expires": [r.expires_at for r in reqs],
                    },
                ).fetchall()
                price = {r.tag: r.price for r in reqs}
                booked = {t: OrderResult(Outcome.DONE, ref=str(k), detail="booked", price=price[t]) for t, k in rows}
                # Refused now is no answer for a tag booked by an earlier attempt (a retry
                # after a crash, with the market closed since): the order that is there wins.
                missing = [r.tag for r in asked if r.tag not in booked]
                if missing:
                    booked.update(self._booked_already(cur, missing))
                expired = OrderResult(Outcome.EXPIRED, detail="expired before it was booked")
                results = [booked.get(r.tag) or refused.get(r.tag) or expired for r in asked]
                if within is not None:
                    within(cur, results)
                return results
        except psycopg.OperationalError as e:
            # Lost mid-transaction or at COMMIT: the booking may or may not have committed.
            unknown = OrderResult(Outcome.UNKNOWN, detail=f"paper broker: {first_line(e)}")
            return [refused.get(r.tag) or unknown for r in asked]

    def _booked_already(self, cur: psycopg.Cursor, tags: list[str]) -> dict[str, OrderResult]:
        """A tag is booked at most once: the venue answers with that order, never a second one."""
        rows = cur.execute(
            "SELECT tag, ticket, price FROM paper_orders WHERE cluster = %s AND tag = ANY(%s)", (self._cluster, tags)
        ).fetchall()
        return {
            tag: OrderResult(Outcome.DONE, ref=str(ticket), detail="already booked", price=price)
            for tag, ticket, price in rows
        }

    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None, epoch: int | None = None) -> OrderResult:
        """Change an open position's stops (None keeps one), fenced when an epoch is given.
        A refusal says what it means (`Refusal`): GONE for no open position; with a market,
        INVALID_STOPS for a stop on the wrong side of the closing price or within the
        symbol's stops level, FROZEN when the position's stops are within its freeze level,
        OTHER when there is no fresh price to judge by or the symbol does not trade now (its
        trading disabled, or, with the venue's settings, its market closed). A change to what
        it has already is DONE."""
        if not str(ticket).isdigit():
            return _gone(ticket)
        with self._pool.connection() as conn:
            row = conn.execute(POSITION_SQL, (self._cluster, int(ticket))).fetchone()
            if row is None:
                return _gone(ticket)
            held = VenuePosition(int(ticket), row[0], Side(row[1]), row[2], row[3], row[4], row[5])
            if (sl is None or sl == held.sl) and (tp is None or tp == held.tp):
                return OrderResult(Outcome.DONE, ref=ticket, detail="no change")
            if self.market is not None:
                refused = self._modify_refusal(self.market, held, sl, tp)
                if refused is not None:
                    return refused
            with fenced(conn, self._cluster, epoch) if epoch is not None else conn.transaction():
                # Only the row as judged: a stop-out or another modify in between is judged again
                # by the caller (GONE, or a fresh read next time), never overwritten blind.
                done = conn.execute(MODIFY_SQL, (sl, tp, self._cluster, int(ticket), held.sl, held.tp)).fetchone()
        if done is None:
            return (
                _gone(ticket)
                if self._closed(ticket)
                else OrderResult(Outcome.REJECTED, detail=f"position {ticket} changed meanwhile", refusal=Refusal.OTHER)
            )
        return OrderResult(Outcome.DONE, ref=ticket)

    def modify_many(self, stops: list[tuple[str, Decimal]], epoch: int) -> dict[str, OrderResult]:
        """Many positions' stop losses in one fenced transaction (a manager loop's changes):
        each judged as `modify` judges one, then one statement for every one allowed. A
        position changed or closed in between is answered as `modify` would (GONE, OTHER)."""
        answers: dict[str, OrderResult] = {}
        wanted = {t: sl for t, sl in stops if str(t).isdigit()}
        answers.update({t: _gone(t) for t, _ in stops if t not in wanted})
        if not wanted:
            return answers
        with self._pool.connection() as conn:
            rows = conn.execute(POSITIONS_SQL, (self._cluster, [int(t) for t in wanted])).fetchall()
            held = {str(r[0]): VenuePosition(int(r[0]), r[1], Side(r[2]), r[3], r[4], r[5], r[6]) for r in rows}
            send: list[tuple[str, Decimal, VenuePosition]] = []
            for ticket, sl in wanted.items():
                position = held.get(ticket)
                if position is None:
                    answers[ticket] = _gone(ticket)
                elif sl == position.sl:
                    answers[ticket] = OrderResult(Outcome.DONE, ref=ticket, detail="no change")
                elif self.market is not None and (refused := self._modify_refusal(self.market, position, sl, None)):
                    answers[ticket] = refused
                else:
                    send.append((ticket, sl, position))
            if send:
                with fenced(conn, self._cluster, epoch):
                    rows = conn.execute(MODIFY_MANY_SQL, (_stops_json(send), self._cluster)).fetchall()
                done = {str(r[0]) for r in rows}
                for ticket, _, _ in send:
                    answers[ticket] = (
                        OrderResult(Outcome.DONE, ref=ticket)
                        if ticket in done
                        else OrderResult(
                            Outcome.REJECTED, detail=f"position {ticket} changed meanwhile", refusal=Refusal.OTHER
                        )
                    )
        return answers

    def _modify_refusal(
        self, market: Market, held: VenuePosition, sl: Decimal | None, tp: Decimal | None
    ) -> OrderResult | None:
        try:
            contract, quote, open_market = self._judged_at(market, held.symbol)
        except MarketDataError as e:
            return OrderResult(
                Outcome.REJECTED, detail=f"no fresh price to judge the stops by: {first_line(e)}", refusal=Refusal.OTHER
            )
        refused = rules.check_modify(contract, quote, held, sl, tp, open_market=open_market)
        if refused is None:
            return None
        meaning = MODIFY_REFUSALS.get(refused.rule, Refusal.OTHER)
        return OrderResult(Outcome.REJECTED, detail=str(refused), refusal=meaning)

    def _closed(self, ticket: str) -> bool:
        with self._pool.connection() as conn:
            return conn.execute(POSITION_SQL, (self._cluster, int(ticket))).fetchone() is None

    def closing_deal(self, ticket: str) -> ClosingDeal | None:
        """How a position that is no longer open closed (its last closing deal), or None when
        the venue has no such deal (never open, or still open)."""
        if not str(ticket).isdigit():
            return None
        with self._pool.connection() as conn:
            row = conn.execute(CLOSING_DEAL_SQL, (self._cluster, int(ticket))).fetchone()
        return None if row is None else ClosingDeal(ticket, row[0], row[1], row[2], row[3], row[4])

    def cancel_order(self, ticket: str, epoch: int | None = None) -> OrderResult:
        """Cancel a pending order, fenced when an epoch is given. GONE for no pending order;
        with a market, held to the venue's rules (check_cancel) as MT5 holds it: FROZEN for an
        order within the symbol's freeze level of the market (it may fill any moment), OTHER
        when there is no fresh price to judge by or the symbol does not trade."""
        if not str(ticket).isdigit():
            return _no_order(ticket)
        with self._pool.connection() as conn:
            with fenced(conn, self._cluster, epoch) if epoch is not None else conn.transaction():
                with conn.cursor() as cur:
                    # Locked: the venue cannot fill it between the judgement and the cancel.
                    found, order = ledger.lock_order(cur, self._cluster, int(ticket))
                    if not found:
                        return _no_order(ticket)
                    if self.market is not None and order is not None:
                        refused = self._cancel_refusal(self.market, order)
                        if refused is not None:
                            return refused
                    cur.execute(
                        "UPDATE paper_orders SET state = 'cancelled', done_at = clock_timestamp()"
                        " WHERE cluster = %s AND ticket = %s AND state = 'pending'",
                        (self._cluster, int(ticket)),
                    )
        return OrderResult(Outcome.DONE, ref=ticket)

    def _cancel_refusal(self, market: Market, order: PendingOrder) -> OrderResult | None:
        try:
            contract, quote, open_market = self._judged_at(market, order.symbol)
        except MarketDataError as e:
            return OrderResult(
                Outcome.REJECTED,
                detail=f"no fresh price to judge the cancel of {order.ticket} by: {first_line(e)}",
                refusal=Refusal.OTHER,
            )
        refused = rules.check_cancel(contract, quote, order, open_market=open_market)
        if refused is None:
            return None
        meaning = Refusal.FROZEN if refused.rule == "freeze_level" else Refusal.OTHER
        return OrderResult(Outcome.REJECTED, detail=f"paper venue {refused}", refusal=meaning)

    def _judged_at(self, market: Market, symbol: str) -> tuple[Contract, VenueQuote, bool]:
        """The contract (its trade mode as the venue's settings override it), the current
        quote and whether the venue's hours have the market open: what a modify, a cancel or a
        close is judged by. Without venue settings the market is taken as open, as the feed's mode.
        MarketDataError when there is no fresh price."""
        tick = market.tick(symbol, max_age_ms=self.max_quote_age_ms)
        spec = market.spec(symbol)
        venue = self.venue
        if venue is None:
            return Contract.of(spec, self._currency), VenueQuote.of(tick), True
        contract = Contract.of(spec, self._currency, venue.trade_mode(symbol, spec.trade_mode))
        return contract, VenueQuote.of(tick), venue.hours.is_open(symbol, tick.time_ms)

    def close_position(self, ticket: str, epoch: int | None = None) -> OrderResult:
        """Close the whole position, fenced when an epoch is given: with a market at its bid
        (a buy) or ask (a sell), with its realised P&L moving the balance, through the venue's
        ledger, which serialises with the venue's own stop-outs; without one at its entry. With
        a market, held to rules.check_close first: refused (OTHER) where the symbol's trading is
        disabled or, with the venue's settings, its market is closed, as MT5 refuses it."""
        if self.market is not None:
            return self._close_at_market(self.market, ticket, epoch)
        with self._pool.connection() as conn:
            with fenced(conn, self._cluster, epoch) if epoch is not None else conn.transaction():
                row = conn.execute(
                    "UPDATE paper_positions SET closed_at = clock_timestamp(), close_price = price, pnl = 0 "
                    "WHERE cluster = %s AND ticket = %s AND closed_at IS NULL RETURNING volume, price",
                    (self._cluster, int(ticket)),
                ).fetchone()
                if row is None:
                    return _gone(ticket)
                conn.execute(DEAL_SQL, (self._cluster, int(ticket), "close", row[0], row[1], 0))
        return OrderResult(Outcome.DONE, ref=ticket, price=row[1])

    def close_partial(self, ticket: str, volume: Decimal, epoch: int | None = None) -> OrderResult:
        """Close `volume` lots of an open position at the market (needs one), fenced when an
        epoch is given, held to check_close like a whole close. REJECTED (OTHER) for a volume
        that would not leave some open; GONE for no open position."""
        if not str(ticket).isdigit():
            return _gone(ticket)
        if self.market is None:
            return OrderResult(Outcome.REJECTED, detail="a partial close needs a market price", refusal=Refusal.OTHER)
        with self._pool.connection() as conn:
            row = conn.execute(POSITION_SQL, (self._cluster, int(ticket))).fetchone()
            if row is None:
                return _gone(ticket)
            symbol, volume_now = row[0], row[2]
            if not 0 < volume < volume_now:
                return OrderResult(
                    Outcome.REJECTED,
                    detail=f"a partial close of {volume} of position {ticket} must leave some of its {volume_now} open",
                    refusal=Refusal.OTHER,
                )
            try:
                contract, quote, open_market = self._judged_at(self.market, symbol)
            except MarketDataError as e:
                return OrderResult(
                    Outcome.REJECTED, detail=f"no fresh price to close {ticket}: {first_line(e)}", refusal=Refusal.OTHER
                )
            refused = (
                rules.check_close(contract, open_market=open_market)
                or rules.check_volume(contract, volume)
                or rules.check_volume(contract, volume_now - volume)  # what stays open is a position too
            )
            if refused is not None:
                return OrderResult(Outcome.REJECTED, detail=f"paper venue {refused}", refusal=Refusal.OTHER)
            with fenced(conn, self._cluster, epoch) if epoch is not None else conn.transaction():
                with conn.cursor() as cur:
                    done = ledger.close_part(cur, self._cluster, int(ticket), volume, quote, contract)
        if done is None:
            return OrderResult(Outcome.REJECTED, detail=f"position {ticket} changed meanwhile", refusal=Refusal.OTHER)
        match, _balance = done
        return OrderResult(Outcome.DONE, ref=ticket, detail=f"closed {volume}, P&L {match.pnl}", price=match.price)

    def _close_at_market(self, market: Market, ticket: str, epoch: int | None) -> OrderResult:
        if not str(ticket).isdigit():
            return _gone(ticket)
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT symbol FROM paper_positions WHERE cluster = %s AND ticket = %s AND closed_at IS NULL",
                (self._cluster, int(ticket)),
            ).fetchone()
            if row is None:
                return _gone(ticket)
            try:
                contract, quote, open_market = self._judged_at(market, row[0])
            except MarketDataError as e:  # a close is never made at a price that is not there
                return OrderResult(
                    Outcome.REJECTED,
                    detail=f"no fresh price to close {ticket}: {first_line(e)}",
                    refusal=Refusal.OTHER,
                )
            refused = rules.check_close(contract, open_market=open_market)
            if refused is not None:
                return OrderResult(Outcome.REJECTED, detail=f"paper venue {refused}", refusal=Refusal.OTHER)
            with fenced(conn, self._cluster, epoch) if epoch is not None else conn.transaction():
                with conn.cursor() as cur:
                    closed = ledger.close_position(cur, self._cluster, int(ticket), quote, contract)
        if closed is None:
            return _gone(ticket)
        match, _balance = closed
        return OrderResult(Outcome.DONE, ref=ticket, detail=f"closed, P&L {match.pnl}", price=match.price)
