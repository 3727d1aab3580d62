"""Specs and helpers the venue's unit tests share: EURUSD, USDJPY and XAUUSD as a typical
USD account sees them (EURUSD 1 lot = 100,000 EUR: 1 USD per 0.00001; USDJPY's profit is in
JPY; gold 100 oz a lot with a freeze level)."""

from __future__ import annotations

from decimal import Decimal

from engine.market.base import MarketSpec, TradeMode
from engine.model import Side
from engine.venue.model import Kind, Order, Position, Quote
from engine.venue.pnl import Contract

D = Decimal


def spec(symbol: str, trade_mode: TradeMode = TradeMode.FULL) -> MarketSpec:
    if symbol == "EURUSD":
        return MarketSpec(
            "EURUSD", 5, D("0.00001"), D(100000), D("0.00001"), D(1), D("0.01"), D(100), D("0.01"), 10, 0, trade_mode
        )
    if symbol == "USDJPY":
        jpy = (D("0.001"), D(100000), D("0.001"), D("0.667"), D("0.01"), D(100), D("0.01"))
        return MarketSpec("USDJPY", 3, *jpy, 10, 0, trade_mode, currency_profit="JPY")
    if symbol == "XAUUSD":
        return MarketSpec(
            "XAUUSD", 2, D("0.01"), D(100), D("0.01"), D(1), D("0.01"), D(100), D("0.01"), 50, 10, trade_mode
        )
    raise KeyError(symbol)


def contract(symbol: str, trade_mode: TradeMode = TradeMode.FULL) -> Contract:
    return Contract.of(spec(symbol, trade_mode))


def q(t: int, bid: str, ask: str, symbol: str = "EURUSD") -> Quote:
    return Quote(symbol, t, D(bid), D(ask))


def buy(
    ticket: int,
    price: str,
    sl: str | None = None,
    tp: str | None = None,
    volume: str = "1",
    symbol: str = "EURUSD",
    since: int = 0,
) -> Position:
    return Position(ticket, symbol, Side.BUY, D(volume), D(price), D(sl) if sl else None, D(tp) if tp else None, since)


def sell(
    ticket: int,
    price: str,
    sl: str | None = None,
    tp: str | None = None,
    volume: str = "1",
    symbol: str = "EURUSD",
    since: int = 0,
) -> Position:
    return Position(ticket, symbol, Side.SELL, D(volume), D(price), D(sl) if sl else None, D(tp) if tp else None, since)


def pending(
    ticket: int,
    side: Side,
    kind: Kind,
    price: str,
    *,
    volume: str = "1",
    sl: str | None = None,
    tp: str | None = None,
    expires: int | None = None,
    symbol: str = "EURUSD",
    since: int = 0,
) -> Order:
    return Order(
        ticket, symbol, side, kind, D(volume), D(price), D(sl) if sl else None, D(tp) if tp else None, since, expires
    )
