"""A market source that plays a fixed price path on a clock the test moves: the paper
venue's tests script exactly the ticks that should stop, fill or expire something."""

from __future__ import annotations

import bisect
from decimal import Decimal

import numpy as np

from engine.market.base import Bars, MarketSpec, Tick, Ticks, Timeframe, UnknownSymbol
from tests.unit.venue_fixtures import spec


class ScriptedSource:
    """The Source protocol over ticks given by `add`; `now` is the clock (a live source:
    its time is the wall clock's, as the sim's is)."""

    name = "scripted"
    live = True

    def __init__(self, now_ms: int, symbols: tuple[str, ...] = ("EURUSD",), specs: dict[str, MarketSpec] | None = None):
        self.now = now_ms
        self._specs = specs or {s: spec(s) for s in symbols}
        self._ticks: dict[str, list[tuple[int, int, int]]] = {s: [] for s in self._specs}
        self.fail = False

    def digits(self, symbol: str) -> int:
        return self._specs[symbol].digits

    def add(self, symbol: str, t_ms: int, bid: str, ask: str) -> None:
        d = self.digits(symbol)
        points = (int(Decimal(bid).scaleb(d)), int(Decimal(ask).scaleb(d)))
        bisect.insort(self._ticks[symbol], (t_ms, *points))

    def now_ms(self) -> int:
        return self.now

    def symbols(self) -> list[str]:
        return list(self._specs)

    def spec(self, symbol: str) -> MarketSpec:
        if symbol not in self._specs:
            raise UnknownSymbol(symbol)
        return self._specs[symbol]

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        rows = [r for r in self._ticks[symbol] if after_ms < r[0] <= until_ms][:limit]
        col = [np.array([r[k] for r in rows], dtype=np.int64) for k in range(3)]
        return Ticks(symbol, self.digits(symbol), col[0], col[1], col[2], np.full(len(rows), -1, dtype=np.int64))

    def tick(self, symbol: str) -> Tick:
        got = self.ticks(symbol, -1, self.now, 1_000_000)
        if not len(got):
            raise UnknownSymbol(f"{symbol} has no tick yet")
        return got.tick(len(got) - 1, age_ms=self.now - int(got.time_ms[-1]))

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        return Bars.empty(symbol, timeframe, self.digits(symbol))

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        return Bars.empty(symbol, timeframe, self.digits(symbol))
