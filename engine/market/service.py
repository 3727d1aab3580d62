"""`Market`: the one interface the engine reads market data through.

Every reading carries its age and every caller states the age it accepts (`max_age_ms`):
a reading older than that raises StaleData instead of being served, so nothing stale is
ever taken for fresh. Bars come through the shared BarCache (closed bars) plus the
source's forming bar; their age is the older of the cache's and the feed's (the latest
tick's), so a feed that stopped makes its bars stale too.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.timefmt import iso_utc
from engine.market.base import (
    BadRequest,
    BarHandler,
    Bars,
    FeedUnavailable,
    MarketSpec,
    Source,
    StaleData,
    Tick,
    TickHandler,
    Timeframe,
    check_count,
)
from engine.market.cache import BarCache
from engine.market.feed import Feed, Subscription
from engine.market.metrics import MarketMetrics, default_metrics


class Market:
    def __init__(
        self,
        source: Source,
        *,
        max_stale_ms: int = 60_000,
        metrics: MarketMetrics | None = None,
        max_backlog_ms: int = 60_000,
    ) -> None:
        self.source = source
        self.metrics = metrics or default_metrics()
        self.cache = BarCache(source, max_stale_ms=max_stale_ms, metrics=self.metrics)
        self.feed = Feed(source, max_backlog_ms=max_backlog_ms, on_up=self._up)

    @property
    def name(self) -> str:
        return self.source.name

    def _up(self, ok: bool) -> None:
        self.metrics.up.labels(self.source.name).set(1 if ok else 0)

    def symbols(self) -> list[str]:
        return self.source.symbols()

    def spec(self, symbol: str) -> MarketSpec:
        try:
            spec = self.source.spec(symbol)
        except FeedUnavailable:
            self._up(False)
            raise
        self._up(True)
        return spec

    def tick(self, symbol: str, *, max_age_ms: int) -> Tick:
        """The latest tick; StaleData when it is older than `max_age_ms`."""
        _check_age(max_age_ms)
        try:
            tick = self.source.tick(symbol)
        except FeedUnavailable:
            self._up(False)
            raise
        self._up(True)
        self.metrics.tick_age.labels(symbol).set(tick.age_ms / 1000)
        if tick.age_ms > max_age_ms:
            raise StaleData(f"{symbol} tick at {iso_utc(tick.time)}", tick.age_ms, max_age_ms)
        return tick

    def bars(self, symbol: str, timeframe: Timeframe | str, count: int, *, max_age_ms: int) -> Bars:
        """`count` closed bars (fewer when the source has fewer) and, after them, the bar
        forming now when it has a tick (`forming`). StaleData when older than `max_age_ms`."""
        tf = Timeframe.parse(timeframe)
        count = check_count(count)
        _check_age(max_age_ms)
        closed, result = self.cache.read(symbol, tf, count, max_age_ms)
        try:
            latest = self.source.tick(symbol)
            forming = self.source.forming_bar(symbol, tf)
        except FeedUnavailable as exc:
            # The closed bars alone, aged from when they were last confirmed complete.
            self._up(False)
            age = max(closed.age_ms, self.source.now_ms() - closed.as_of_ms)
            if age > min(max_age_ms, self.cache.max_stale_ms):
                self.metrics.cache.labels("refused").inc()
                raise StaleData(f"{symbol} {tf.name} bars (the source failed: {exc})", age, max_age_ms) from exc
            self.metrics.cache.labels("stale").inc()
            return closed.aged(closed.as_of_ms, age)
        self._up(True)
        self.metrics.tick_age.labels(symbol).set(latest.age_ms / 1000)
        age = max(closed.age_ms, latest.age_ms)
        if age > max_age_ms:  # the feed itself is behind (it stopped): refuse, whatever was cached
            self.metrics.cache.labels("refused").inc()
            raise StaleData(f"{symbol} {tf.name} bars", age, max_age_ms)
        self.metrics.cache.labels(result).inc()  # one count per request
        if len(forming) and (not len(closed) or forming.time_ms[0] > closed.time_ms[-1]):
            out = Bars.concat([closed, forming], forming=True)
        else:
            out = closed
        return out.aged(closed.as_of_ms, age)

    def subscribe(
        self,
        symbols: Iterable[str],
        *,
        on_tick: TickHandler | None = None,
        on_bar: BarHandler | None = None,
        timeframes: Iterable[Timeframe | str] = (Timeframe.M1,),
    ) -> Subscription:
        return self.feed.subscribe(symbols, on_tick=on_tick, on_bar=on_bar, timeframes=timeframes)

    def pump(self) -> int:
        return self.feed.pump()

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def _check_age(max_age_ms: int) -> None:
    if isinstance(max_age_ms, bool) or not isinstance(max_age_ms, int) or max_age_ms < 0:
        raise BadRequest(f"max_age_ms must be an integer >= 0 (got {max_age_ms!r})")
