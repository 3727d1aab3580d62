"""The paper venue's matching: what a quote does to the open positions and pending orders.

Pure: values in, values out, no I/O and no clock (time is the quote's), so the process
(engine/venue/process.py) applies the decisions in PostgreSQL and the property tests run
them on random paths. The rules, as a broker applies them:

- a position closes on the side of the book it would trade on: a buy sells at the bid, so
  its stop loss triggers when the bid is at or below the stop and its take profit when the
  bid is at or above it; a sell buys at the ask, the mirror image;
- it closes at the quote's price, not at the level: a gap through a stop fills at the first
  price beyond it (worse than the stop), a gap through a take profit at the better price;
  when one quote crosses both (a stop and a take profit on the same side), the stop wins;
- a pending limit fills at its price or better (a buy limit when the ask <= its price), a
  stop order at the first price at or beyond it (a buy stop when the ask >= its price),
  each at the quote's ask (buy) or bid (sell);
- an order whose expiry has come is expired before anything fills it; a position or order
  is acted on only by a quote later than `since_ms` (the book has no past);
- a closed market or a symbol whose trading is disabled triggers nothing (its orders still
  expire); close-only stops pending orders from filling and lets stops and take profits
  close; long-only or short-only fill only orders of that side;
- stop-out: while the margin level (equity / margin) is below the stop-out level, the
  position losing most is closed at its quote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

from engine.market.base import TradeMode
from engine.model import Side
from engine.venue.model import Action, Kind, Match, Order, Position, Quote
from engine.venue.pnl import HUNDRED, Contract, floating, mark


@dataclass(frozen=True, slots=True)
class Permissions:
    """What the venue lets happen on a symbol now: its market hours and trade mode."""

    open_market: bool = True
    trade_mode: TradeMode = TradeMode.FULL

    @property
    def may_close(self) -> bool:
        return self.open_market and self.trade_mode is not TradeMode.DISABLED

    def may_open(self, side: Side) -> bool:
        if not self.open_market:
            return False
        mode = self.trade_mode
        if mode is TradeMode.FULL:
            return True
        if mode is TradeMode.LONG_ONLY:
            return side is Side.BUY
        if mode is TradeMode.SHORT_ONLY:
            return side is Side.SELL
        return False  # CLOSE_ONLY, DISABLED


OPEN = Permissions()


def position_trigger(p: Position, q: Quote, contract: Contract, allow: Permissions = OPEN) -> Match | None:
    """The stop loss or take profit this quote triggers, with its realised P&L, or None."""
    if q.time_ms <= p.since_ms or not allow.may_close:
        return None
    sl, tp = p.sl, p.tp
    if p.side is Side.BUY:
        price = q.bid
        if sl is not None and price <= sl:
            action, level = Action.STOP_LOSS, sl
        elif tp is not None and price >= tp:
            action, level = Action.TAKE_PROFIT, tp
        else:
            return None
    else:
        price = q.ask
        if sl is not None and price >= sl:
            action, level = Action.STOP_LOSS, sl
        elif tp is not None and price <= tp:
            action, level = Action.TAKE_PROFIT, tp
        else:
            return None
    pnl = contract.profit(p.side, p.volume, p.price, price)
    return Match(action, p.ticket, p.symbol, p.side, p.volume, price, level, q.time_ms, pnl)


def order_expired(o: Order, now_ms: int) -> bool:
    return o.expires_ms is not None and now_ms >= o.expires_ms


def order_trigger(o: Order, q: Quote, allow: Permissions = OPEN) -> Match | None:
    """The fill (or expiry) this quote brings a pending order, or None."""
    if q.time_ms <= o.since_ms:
        return None
    if order_expired(o, q.time_ms):
        return Match(Action.EXPIRE, o.ticket, o.symbol, o.side, o.volume, None, o.price, q.time_ms)
    if not allow.may_open(o.side):
        return None
    price = q.entry_price(o.side)
    if o.side is Side.BUY:
        hit = price <= o.price if o.kind is Kind.LIMIT else price >= o.price
    else:
        hit = price >= o.price if o.kind is Kind.LIMIT else price <= o.price
    if not hit:
        return None
    return Match(Action.FILL, o.ticket, o.symbol, o.side, o.volume, price, o.price, q.time_ms)


def close_match(p: Position, q: Quote, contract: Contract, action: Action = Action.CLOSE) -> Match:
    """Closing `p` at this quote (on request, or a stop-out), with its realised P&L."""
    price = q.exit_price(p.side)
    pnl = contract.profit(p.side, p.volume, p.price, price)
    return Match(action, p.ticket, p.symbol, p.side, p.volume, price, None, q.time_ms, pnl)


def filled_position(o: Order, m: Match) -> Position:
    """The position a fill opens: the order's ticket, volume and stops at the fill price,
    acted on from the next quote."""
    assert m.action is Action.FILL and m.price is not None
    return Position(o.ticket, o.symbol, o.side, o.volume, m.price, o.sl, o.tp, since_ms=m.time_ms)


def match_quote(
    q: Quote,
    positions: Iterable[Position],
    orders: Iterable[Order],
    contract: Contract,
    allow: Permissions = OPEN,
) -> list[Match]:
    """Everything this quote does to one symbol's book: stops and take profits first (on the
    positions open before it), then expiries and fills of pending orders."""
    out: list[Match] = []
    if allow.may_close:
        for p in positions:
            m = position_trigger(p, q, contract, allow)
            if m is not None:
                out.append(m)
    for o in orders:
        m = order_trigger(o, q, allow)
        if m is not None:
            out.append(m)
    return out


def stop_outs(
    balance: Decimal,
    positions: Iterable[Position],
    quotes: Mapping[str, Quote],
    contracts: Mapping[str, Contract],
    leverage: int,
    stop_out_pct: Decimal,
    allow: Callable[[str], Permissions] = lambda symbol: OPEN,
) -> list[Match]:
    """The positions a stop-out closes: while equity / margin x 100 is below `stop_out_pct`,
    the position losing most (that has a quote and may close) is closed at its quote. Closing
    at the mark leaves equity where it was and frees the position's margin, so one mark
    decides the whole sequence."""
    if stop_out_pct <= 0:
        return []
    held = list(positions)
    m = mark(balance, held, quotes, contracts, leverage)
    equity, margin = m.equity, m.margin
    if margin <= 0 or equity * HUNDRED >= stop_out_pct * margin:
        return []
    candidates = []
    for p in held:
        q = quotes.get(p.symbol)
        if q is not None and q.time_ms > p.since_ms and allow(p.symbol).may_close:
            candidates.append((floating(p, q, contracts[p.symbol]), p.ticket, p, q))
    candidates.sort(key=lambda c: (c[0], c[1]))
    out = []
    for _, _, p, q in candidates:
        if margin <= 0 or equity * HUNDRED >= stop_out_pct * margin:
            break
        out.append(close_match(p, q, contracts[p.symbol], Action.STOP_OUT))
        margin -= contracts[p.symbol].margin(p.volume, p.price, leverage)
    return out


class Book:
    """The open positions and pending orders by symbol, and the latest quote of each: the
    venue's working copy of the book (the database holds the truth). Still no I/O."""

    def __init__(self) -> None:
        self._positions: dict[str, dict[int, Position]] = {}
        self._orders: dict[str, dict[int, Order]] = {}
        self._position_symbol: dict[int, str] = {}
        self._order_symbol: dict[int, str] = {}
        self.quotes: dict[str, Quote] = {}

    def __len__(self) -> int:
        return len(self._position_symbol) + len(self._order_symbol)

    def positions(self, symbol: str | None = None) -> Iterator[Position]:
        if symbol is not None:
            yield from self._positions.get(symbol, {}).values()
            return
        for by_ticket in self._positions.values():
            yield from by_ticket.values()

    def orders(self, symbol: str | None = None) -> Iterator[Order]:
        if symbol is not None:
            yield from self._orders.get(symbol, {}).values()
            return
        for by_ticket in self._orders.values():
            yield from by_ticket.values()

    def position(self, ticket: int) -> Position | None:
        symbol = self._position_symbol.get(ticket)
        return None if symbol is None else self._positions[symbol][ticket]

    def order(self, ticket: int) -> Order | None:
        symbol = self._order_symbol.get(ticket)
        return None if symbol is None else self._orders[symbol][ticket]

    @property
    def position_count(self) -> int:
        return len(self._position_symbol)

    @property
    def order_count(self) -> int:
        return len(self._order_symbol)

    def put_position(self, p: Position) -> None:
        self.drop_position(p.ticket)
        self._positions.setdefault(p.symbol, {})[p.ticket] = p
        self._position_symbol[p.ticket] = p.symbol

    def put_order(self, o: Order) -> None:
        self.drop_order(o.ticket)
        self._orders.setdefault(o.symbol, {})[o.ticket] = o
        self._order_symbol[o.ticket] = o.symbol

    def drop_position(self, ticket: int) -> Position | None:
        symbol = self._position_symbol.pop(ticket, None)
        return None if symbol is None else self._positions[symbol].pop(ticket)

    def drop_order(self, ticket: int) -> Order | None:
        symbol = self._order_symbol.pop(ticket, None)
        return None if symbol is None else self._orders[symbol].pop(ticket)

    def clear(self) -> None:
        self._positions.clear()
        self._orders.clear()
        self._position_symbol.clear()
        self._order_symbol.clear()

    def on_quote(self, q: Quote, contract: Contract, allow: Permissions = OPEN) -> list[Match]:
        """What `q` does to its symbol's book (nothing is changed: see `apply`)."""
        self.quotes[q.symbol] = q
        return match_quote(
            q,
            self._positions.get(q.symbol, {}).values(),
            self._orders.get(q.symbol, {}).values(),
            contract,
            allow,
        )

    def expired(self, now_ms: int) -> list[Match]:
        """Pending orders whose expiry has come by `now_ms`, quote or not (a market with no
        ticks still runs out its orders)."""
        return [
            Match(Action.EXPIRE, o.ticket, o.symbol, o.side, o.volume, None, o.price, now_ms)
            for o in self.orders()
            if order_expired(o, now_ms) and now_ms > o.since_ms
        ]

    def apply(self, m: Match) -> None:
        """The book once `m` is booked: a fill's order becomes its position, a close removes
        the position, an expiry the order."""
        if m.action is Action.FILL:
            o = self.drop_order(m.ticket)
            if o is not None:
                self.put_position(filled_position(o, m))
        elif m.action is Action.EXPIRE:
            self.drop_order(m.ticket)
        else:
            self.drop_position(m.ticket)
