"""The account as an operator reads it (`haexec account|positions|deals`, GET /account and
GET /positions): the broker's account and open positions, each position marked at the
configured market data, and the paper venue's deals. One JSON form for the CLI and HTTP:
prices and money as decimal strings, times ISO 8601 UTC."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from common.errors import first_line
from common.timefmt import iso_utc
from engine.brokers.base import Account, Broker, Position
from engine.market import Market, MarketDataError
from engine.venue import ledger
from engine.venue.model import Quote as VenueQuote
from engine.venue.pnl import Contract


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def account_json(account: Account) -> dict[str, Any]:
    return {
        "currency": account.currency,
        "balance": str(account.balance),
        "equity": str(account.equity),
        "floating": str(account.equity - account.balance),
        "margin": _text(account.margin),
        "free_margin": _text(account.free_margin),
        "daily_pnl": str(account.daily_pnl),
    }


def positions_json(
    positions: list[Position], market: Market | None, currency: str, max_age_ms: int
) -> list[dict[str, Any]]:
    """Each open position with the price it would close at now and its floating P&L; where
    no fresh price is there, both are null and `price_error` says why (never a stale mark
    shown as a current one)."""
    rows = []
    for p in positions:
        row: dict[str, Any] = {
            "ticket": p.ticket,
            "symbol": p.symbol,
            "side": p.side.value,
            "volume": str(p.volume),
            "price": str(p.price),
            "sl": _text(p.sl),
            "tp": _text(p.tp),
            "tag": p.tag,
            "current": None,
            "floating": None,
        }
        if market is None:
            row["price_error"] = "no market data"
        else:
            try:
                quote = VenueQuote.of(market.tick(p.symbol, max_age_ms=max_age_ms))
                contract = Contract.of(market.spec(p.symbol), currency)
            except MarketDataError as e:
                row["price_error"] = first_line(e)
            else:
                row["current"] = str(quote.exit_price(p.side))
                row["floating"] = str(contract.profit(p.side, p.volume, p.price, quote.exit_price(p.side)))
        rows.append(row)
    return rows


def read_positions(broker: Broker, market: Market | None, max_age_ms: int) -> dict[str, Any]:
    """What GET /positions answers; BrokerError when the venue cannot be read."""
    account = broker.account()
    return {"positions": positions_json(broker.positions(), market, account.currency, max_age_ms)}


def deals_json(deals: list[ledger.Deal]) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "ticket": d.ticket,
            "kind": d.kind,
            "volume": str(d.volume),
            "price": str(d.price),
            "pnl": str(d.pnl),
            "balance": _text(d.balance),
            "sl": _text(d.sl),
            "tp": _text(d.tp),
            "at": iso_utc(d.at),
        }
        for d in deals
    ]


def start_of_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)
