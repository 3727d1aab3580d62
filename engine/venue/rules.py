"""The rules a real venue enforces on a request, as MetaTrader 5 states them. Pure: a
request, the symbol's contract, the quote and whether its market is open in; a `Refusal`
(rule + one line) or None out. The replica's paper broker calls these before it books,
modifies, closes or cancels (README "The paper venue": the hooks), so a request the venue
would refuse is refused where it is made, synchronously, as a broker answers.

In order:
- `market_closed`: outside the symbol's hours nothing is accepted;
- `trade_mode`: disabled refuses everything, close-only every new position or order,
  long-only every sell that opens, short-only every buy;
- `volume`: at least the minimum, at most the maximum, a whole number of steps;
- `invalid_price`: a pending order on the wrong side of the market, or nearer to it than
  the stops level (buy limit: ask - price >= level; buy stop: price - ask >= level; sell
  limit: price - bid >= level; sell stop: bid - price >= level);
- `stops_level`: a stop loss or take profit nearer than the stops level to the price it is
  measured from (an open position's or a market order's closing price, bid for a buy and
  ask for a sell; a pending order's own price), or on the wrong side of it;
- `freeze_level`: a position whose stop loss or take profit, or a pending order whose
  price, is within the freeze level of the market cannot be modified or cancelled (it may
  be about to trigger).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from engine.market.base import TradeMode
from engine.model import Side
from engine.venue.model import Kind, Order, Position, Quote
from engine.venue.pnl import CTX, Contract

MARKET = "market"


@dataclass(frozen=True)
class Refusal:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def _closed(contract: Contract, open_market: bool) -> Refusal | None:
    if not open_market:
        return Refusal("market_closed", f"the {contract.symbol} market is closed")
    if contract.trade_mode is TradeMode.DISABLED:
        return Refusal("trade_mode", f"trading {contract.symbol} is disabled")
    return None


def check_volume(contract: Contract, volume: Decimal) -> Refusal | None:
    if not volume > 0 or volume < contract.volume_min:
        return Refusal("volume", f"{volume} lots is below the minimum {contract.volume_min} of {contract.symbol}")
    if volume > contract.volume_max:
        return Refusal("volume", f"{volume} lots is above the maximum {contract.volume_max} of {contract.symbol}")
    if CTX.remainder(volume, contract.volume_step) != 0:
        return Refusal(
            "volume", f"{volume} lots is not a multiple of the step {contract.volume_step} of {contract.symbol}"
        )
    return None


def _level(contract: Contract, points: int) -> Decimal:
    return CTX.multiply(Decimal(points), contract.point)


def check_stops(
    contract: Contract, side: Side, reference: Decimal, sl: Decimal | None, tp: Decimal | None, what: str
) -> Refusal | None:
    """`sl` and `tp` on the right side of `reference`, at least the stops level from it."""
    level = _level(contract, contract.stops_level)
    sign = 1 if side is Side.BUY else -1
    if sl is not None:
        gap = sign * (reference - sl)
        if gap <= 0 or gap < level:
            return Refusal(
                "stops_level",
                f"stop loss {sl} must be {'below' if sign > 0 else 'above'} {what} {reference} by at least "
                f"{contract.stops_level} points ({level})",
            )
    if tp is not None:
        gap = sign * (tp - reference)
        if gap <= 0 or gap < level:
            return Refusal(
                "stops_level",
                f"take profit {tp} must be {'above' if sign > 0 else 'below'} {what} {reference} by at least "
                f"{contract.stops_level} points ({level})",
            )
    return None


def check_open(
    contract: Contract,
    quote: Quote,
    side: Side,
    kind: Kind | str,
    volume: Decimal,
    price: Decimal | None,
    sl: Decimal | None,
    tp: Decimal | None,
    *,
    open_market: bool,
) -> Refusal | None:
    """A new market order (`kind` "market", `price` ignored) or pending order (Kind)."""
    refused = _closed(contract, open_market)
    if refused:
        return refused
    mode = contract.trade_mode
    if mode is TradeMode.CLOSE_ONLY:
        return Refusal("trade_mode", f"{contract.symbol} is close-only: positions may be closed, not opened")
    if (mode is TradeMode.LONG_ONLY and side is Side.SELL) or (mode is TradeMode.SHORT_ONLY and side is Side.BUY):
        return Refusal("trade_mode", f"{contract.symbol} is {mode.name.lower().replace('_', '-')}: no {side} orders")
    refused = check_volume(contract, volume)
    if refused:
        return refused
    if kind == MARKET:
        return check_stops(contract, side, quote.exit_price(side), sl, tp, "the bid" if side is Side.BUY else "the ask")
    if price is None:
        return Refusal("invalid_price", "a pending order needs a price")
    level = _level(contract, contract.stops_level)
    market = quote.entry_price(side)
    limit = Kind(kind) is Kind.LIMIT
    below = (side is Side.BUY) == limit  # a buy limit and a sell stop sit below the market
    gap = (market - price) if below else (price - market)
    if gap < level:
        where = "below" if below else "above"
        return Refusal(
            "invalid_price",
            f"a {side} {Kind(kind)} at {price} must be {where} the {'ask' if side is Side.BUY else 'bid'} {market} "
            f"by at least {contract.stops_level} points ({level})",
        )
    return check_stops(contract, side, price, sl, tp, "the order price")


def check_modify(
    contract: Contract, quote: Quote, position: Position, sl: Decimal | None, tp: Decimal | None, *, open_market: bool
) -> Refusal | None:
    """New stops for an open position (None: that one unchanged)."""
    refused = _closed(contract, open_market)
    if refused:
        return refused
    refused = _frozen_position(contract, quote, position)
    if refused:
        return refused
    new_sl = position.sl if sl is None else sl
    new_tp = position.tp if tp is None else tp
    closing = quote.exit_price(position.side)
    what = "the bid" if position.side is Side.BUY else "the ask"
    return check_stops(contract, position.side, closing, new_sl, new_tp, what)


def _frozen_position(contract: Contract, quote: Quote, p: Position) -> Refusal | None:
    if contract.freeze_level <= 0:
        return None
    freeze = _level(contract, contract.freeze_level)
    sign = 1 if p.side is Side.BUY else -1
    closing = quote.exit_price(p.side)
    for name, level, gap in (
        ("stop loss", p.sl, None if p.sl is None else sign * (closing - p.sl)),
        ("take profit", p.tp, None if p.tp is None else sign * (p.tp - closing)),
    ):
        if gap is not None and gap <= freeze:
            return Refusal(
                "freeze_level",
                f"position {p.ticket}'s {name} {level} is within the freeze level ({contract.freeze_level} points) "
                f"of the market {closing}",
            )
    return None


def check_close(contract: Contract, *, open_market: bool) -> Refusal | None:
    """Closing a position: refused only when the market is closed or trading disabled
    (close-only is for exactly this)."""
    return _closed(contract, open_market)


def check_cancel(contract: Contract, quote: Quote, order: Order, *, open_market: bool) -> Refusal | None:
    refused = _closed(contract, open_market)
    if refused:
        return refused
    if contract.freeze_level <= 0:
        return None
    freeze = _level(contract, contract.freeze_level)
    market = quote.entry_price(order.side)
    limit = order.kind is Kind.LIMIT
    gap = (market - order.price) if (order.side is Side.BUY) == limit else (order.price - market)
    if gap <= freeze:
        return Refusal(
            "freeze_level",
            f"order {order.ticket} at {order.price} is within the freeze level ({contract.freeze_level} points) "
            f"of the market {market}",
        )
    return None
