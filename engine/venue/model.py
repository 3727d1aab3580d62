"""The values the venue's matching speaks: a quote, an open position, a pending order, and
what a quote does to them (a `Match`). Prices and money are Decimal, times epoch ms UTC.

`since_ms` on a position or an order is the source time it exists from: only a quote
strictly later can act on it, so a restarted venue catching up on the ticks it missed
never fills an order, or stops a position, at a price from before it was there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from engine.market.base import Tick
from engine.model import Side


class Kind(enum.StrEnum):
    """A pending order's kind. A limit fills at its price or better (a buy limit when the ask
    is at or below it); a stop when the market reaches it, at the first price beyond (a buy
    stop when the ask is at or above it)."""

    LIMIT = "limit"
    STOP = "stop"


class Action(enum.StrEnum):
    """What a quote did. The value is the deal kind in paper_deals (EXPIRE makes no deal:
    nothing traded)."""

    FILL = "fill"  # a pending order became a position
    STOP_LOSS = "sl"
    TAKE_PROFIT = "tp"
    STOP_OUT = "stop_out"  # the margin level fell below the stop-out level
    CLOSE = "close"  # closed on request (a replica's close)
    EXPIRE = "expire"  # a pending order reached its expiry unfilled

    @property
    def closes(self) -> bool:
        return self in (Action.STOP_LOSS, Action.TAKE_PROFIT, Action.STOP_OUT, Action.CLOSE)


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    time_ms: int
    bid: Decimal
    ask: Decimal

    @classmethod
    def of(cls, tick: Tick) -> Quote:
        return cls(tick.symbol, tick.time_ms, tick.bid, tick.ask)

    def exit_price(self, side: Side) -> Decimal:
        """Where a position of `side` closes: a buy sells at the bid, a sell buys at the ask."""
        return self.bid if side is Side.BUY else self.ask

    def entry_price(self, side: Side) -> Decimal:
        """Where an order of `side` opens: a buy at the ask, a sell at the bid."""
        return self.ask if side is Side.BUY else self.bid


@dataclass(frozen=True, slots=True)
class Position:
    ticket: int
    symbol: str
    side: Side
    volume: Decimal
    price: Decimal  # the open price
    sl: Decimal | None
    tp: Decimal | None
    since_ms: int = 0


@dataclass(frozen=True, slots=True)
class Order:
    ticket: int
    symbol: str
    side: Side
    kind: Kind
    volume: Decimal
    price: Decimal  # the level it fills at or beyond
    sl: Decimal | None
    tp: Decimal | None
    since_ms: int = 0
    expires_ms: int | None = None  # gone unfilled at the first quote at or after this


@dataclass(frozen=True, slots=True)
class Match:
    """One thing a quote did to one ticket. `price` is the price it traded at (the quote's
    bid or ask; None for an expiry), `level` what triggered it (the stop, the take profit,
    the order's price), `pnl` the realised profit of a close in the account currency, to the
    cent (0 for a fill)."""

    action: Action
    ticket: int
    symbol: str
    side: Side
    volume: Decimal
    price: Decimal | None
    level: Decimal | None
    time_ms: int
    pnl: Decimal = Decimal(0)
