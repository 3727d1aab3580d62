"""What the market data tests share: a clock of market time, and a Market over a source."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from engine.market import Market
from engine.market.metrics import MarketMetrics


class MarketClock:
    """Market time in epoch milliseconds; it moves only when a test sets `ms`."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def market_over(source: Any) -> Market:
    """A Market on `source` whose metrics register nowhere shared (each test its own)."""
    return Market(source, metrics=MarketMetrics(CollectorRegistry()))
