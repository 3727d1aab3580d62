"""How old a process's feed is: the latest tick the pump delivered per watched symbol.

A replica shows this on /health ("market": "ok" or "stale: EURUSD tick 12.3 s old") and as
`haexec_market_tick_age_seconds{symbol}` (computed at each scrape, so a feed that stopped
shows its age growing) without reading the source itself: an MT5 read would queue on the
terminal's one thread, and /health is polled. The ages are on the source's clock (a
replay's is its data time).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

from engine.market.base import Tick
from engine.market.service import Market


class FeedWatch:
    def __init__(self, market: Market, symbols: Sequence[str], max_age_ms: int) -> None:
        if max_age_ms < 0:
            raise ValueError("max_age_ms must be >= 0")
        self.market = market
        self.symbols = tuple(symbols)
        self.max_age_ms = max_age_ms
        self._since = market.source.now_ms()
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sub = market.subscribe(self.symbols, on_tick=self._seen) if self.symbols else None
        for symbol in self.symbols:
            market.metrics.tick_age.labels(symbol).set_function(functools.partial(self.age_s, symbol))

    def _seen(self, tick: Tick) -> None:
        with self._lock:
            if tick.time_ms > self._last.get(tick.symbol, -1):
                self._last[tick.symbol] = tick.time_ms

    def age_s(self, symbol: str) -> float:
        return self.age_ms(symbol) / 1000

    def age_ms(self, symbol: str) -> int:
        """How old the latest tick delivered is (since the watch began, when none came yet)."""
        with self._lock:
            last = self._last.get(symbol)
        return max(0, self.market.source.now_ms() - (self._since if last is None else last))

    def state(self) -> str:
        """`ok`, `stale: <symbol> tick <age> s old` (the stalest of those older than
        max_age_ms), or `unavailable: <why>` when the last pump could not read the source."""
        error = self.market.feed.error
        if error is not None:
            return f"unavailable: {error}"
        if not self.symbols:
            return "ok (no symbols watched: HAEXEC_MARKET_SYMBOLS names them)"
        ages = [(self.age_ms(s), s) for s in self.symbols]
        stale = [(age, s) for age, s in ages if age > self.max_age_ms]
        if not stale:
            return "ok"
        age, symbol = max(stale, key=lambda a: a[0])  # the stalest; of equals, the first watched
        with self._lock:
            seen = symbol in self._last
        what = f"tick {age / 1000:.1f} s old" if seen else f"no tick in {age / 1000:.1f} s"
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        return f"stale: {symbol} {what}{more}"

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
        for symbol in self.symbols:
            try:
                self.market.metrics.tick_age.remove(symbol)
            except KeyError:
                pass
