"""Profit, marking and margin in Decimal, from the market's spec of each symbol.

A lot's value per 1.0 of price, in the account currency, is what every figure is built on:

- profit currency = account currency (EURUSD, XAUUSD, US500 in a USD account): the spec's
  tick value per tick size (EURUSD: 1 per 0.00001 = 100,000, its contract size);
- the symbol's base is the account currency (USDJPY in a USD account, profit in JPY): the
  contract size in the profit currency, converted at the price the position closes or is
  marked at (a JPY profit / USDJPY), as a broker converts it;
- anything else (a cross): the spec's tick value per tick size as the venue loaded it.

Every realised profit and every floating one is rounded to the cent, half away from zero,
once per position: equity is the balance plus the sum of those cents, so closing every
position at the mark realises exactly the floating P&L it showed. Intermediate arithmetic
runs in a context of its own (50 digits, never the caller's thread-local one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow

from engine.market.base import MarketSpec, TradeMode
from engine.model import Side
from engine.venue.model import Position, Quote

CENT = Decimal("0.01")
ZERO = Decimal(0)
HUNDRED = Decimal(100)
CTX = Context(prec=50, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP, context=CTX)


@dataclass(frozen=True, slots=True)
class Contract:
    """What the venue needs of a symbol's spec: its value, and the rules it enforces."""

    symbol: str
    digits: int
    point: Decimal
    contract_size: Decimal
    tick_size: Decimal
    tick_value: Decimal
    volume_min: Decimal
    volume_max: Decimal
    volume_step: Decimal
    stops_level: int  # points
    freeze_level: int  # points
    trade_mode: TradeMode
    base_is_account: bool  # USDJPY in a USD account: profit converted at the closing price

    @classmethod
    def of(cls, spec: MarketSpec, account_currency: str = "USD", trade_mode: TradeMode | None = None) -> Contract:
        base_is_account = spec.currency_profit != account_currency and spec.symbol.startswith(account_currency)
        return cls(
            symbol=spec.symbol,
            digits=spec.digits,
            point=spec.point,
            contract_size=spec.contract_size,
            tick_size=spec.tick_size,
            tick_value=spec.tick_value,
            volume_min=spec.volume_min,
            volume_max=spec.volume_max,
            volume_step=spec.volume_step,
            stops_level=spec.stops_level,
            freeze_level=spec.freeze_level,
            trade_mode=spec.trade_mode if trade_mode is None else trade_mode,
            base_is_account=base_is_account,
        )

    def value_per_price(self, at: Decimal) -> Decimal:
        """Account currency per lot per 1.0 of price, at price `at`."""
        if self.base_is_account:
            return CTX.divide(self.contract_size, at)
        return CTX.divide(self.tick_value, self.tick_size)

    def profit(self, side: Side, volume: Decimal, open_price: Decimal, close_price: Decimal) -> Decimal:
        """Realised profit (negative: a loss) of `volume` lots opened at `open_price` and
        closed at `close_price`, to the cent."""
        move = CTX.subtract(close_price, open_price)
        if side is Side.SELL:
            move = -move
        return cents(CTX.multiply(CTX.multiply(move, volume), self.value_per_price(close_price)))

    def margin(self, volume: Decimal, price: Decimal, leverage: int) -> Decimal:
        """Margin a position holds: its notional in the account currency over the leverage,
        at its open price (the margin of an open position does not move with the market)."""
        if self.base_is_account:  # 1 lot of USDJPY is contract_size USD, whatever the price
            notional = CTX.multiply(volume, self.contract_size)
        else:
            notional = CTX.multiply(CTX.multiply(volume, price), self.value_per_price(price))
        return cents(CTX.divide(notional, Decimal(leverage)))


def floating(position: Position, quote: Quote, contract: Contract) -> Decimal:
    """The position's profit were it closed at this quote (a buy at the bid, a sell at the ask)."""
    return contract.profit(position.side, position.volume, position.price, quote.exit_price(position.side))


@dataclass(frozen=True, slots=True)
class Mark:
    """The account marked to market. equity = balance + floating, free margin = equity -
    margin, margin level = equity / margin in % (None without margin)."""

    balance: Decimal
    floating: Decimal
    equity: Decimal
    margin: Decimal
    free_margin: Decimal
    margin_level: Decimal | None
    positions: int
    unmarked: int  # positions without a quote yet, counted at zero floating P&L


def mark(
    balance: Decimal,
    positions: Iterable[Position],
    quotes: Mapping[str, Quote],
    contracts: Mapping[str, Contract],
    leverage: int,
) -> Mark:
    total = ZERO
    margin = ZERO
    count = 0
    unmarked = 0
    for p in positions:
        count += 1
        contract = contracts[p.symbol]
        margin = CTX.add(margin, contract.margin(p.volume, p.price, leverage))
        quote = quotes.get(p.symbol)
        if quote is None:
            unmarked += 1
            continue
        total = CTX.add(total, floating(p, quote, contract))
    equity = CTX.add(balance, total)
    level = cents(CTX.multiply(CTX.divide(equity, margin), HUNDRED)) if margin > 0 else None
    return Mark(balance, total, equity, margin, CTX.subtract(equity, margin), level, count, unmarked)
