"""The bar cache shared by every reader in a process: per (symbol, timeframe), the closed
bars fetched so far and the source time at which they were last known complete.

A closed bar never changes, so a read inside the same bar period as the last check is a
*hit* and costs no source call; a later read is a *miss* that fetches only the bars opened
after the last one cached. When the source fails, what is cached is served only if it is
no older than both the cache's limit and the caller's (*stale*, with its age); otherwise
the read is *refused* with StaleData. Every result is counted
(haexec_market_cache_requests_total{result}).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from engine.market.base import MAX_BARS, Bars, FeedUnavailable, Source, StaleData, Timeframe, check_count
from engine.market.metrics import MarketMetrics, default_metrics


@dataclass
class _Entry:
    bars: Bars  # closed, oldest first
    checked_ms: int  # source time when these were the newest closed bars there were
    lock: threading.Lock
    # The last fetch returned fewer bars than asked: the source has no older ones, so any
    # request is complete with what is cached.
    complete: bool = False


class BarCache:
    def __init__(self, source: Source, *, max_stale_ms: int = 60_000, metrics: MarketMetrics | None = None) -> None:
        if max_stale_ms < 0:
            raise ValueError("max_stale_ms must be >= 0")
        self.source = source
        self.max_stale_ms = max_stale_ms
        self.metrics = metrics or default_metrics()
        self._entries: dict[tuple[str, Timeframe], _Entry] = {}
        self._lock = threading.Lock()

    def _entry(self, key: tuple[str, Timeframe]) -> _Entry | None:
        with self._lock:
            return self._entries.get(key)

    def closed(self, symbol: str, timeframe: Timeframe, count: int, max_age_ms: int) -> Bars:
        bars, result = self.read(symbol, timeframe, count, max_age_ms)
        self.metrics.cache.labels(result).inc()
        return bars

    def read(self, symbol: str, timeframe: Timeframe, count: int, max_age_ms: int) -> tuple[Bars, str]:
        """Up to `count` closed bars, oldest first, and the result to count (hit, miss,
        stale): as_of_ms is the source time they were last confirmed complete; age_ms is 0
        when nothing can have closed since, else how long ago that was (the source failed
        and they are served stale). A refusal is counted here and raised: StaleData, or
        FeedUnavailable when there is nothing to serve."""
        count = check_count(count)
        key = (symbol, timeframe)
        now = self.source.now_ms()
        entry = self._entry(key)
        if entry is not None and self._fresh(entry, timeframe, now, count):
            return entry.bars.tail(count).aged(entry.checked_ms, 0), "hit"
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(key, _Entry(Bars.empty(symbol, timeframe, 0), -1, threading.Lock()))
        with entry.lock:  # one fetch per key at a time; the others then find it fresh
            now = self.source.now_ms()
            if self._fresh(entry, timeframe, now, count):
                return entry.bars.tail(count).aged(entry.checked_ms, 0), "hit"
            try:
                self._refresh(entry, symbol, timeframe, count)
            except FeedUnavailable as exc:
                return self._stale(entry, symbol, timeframe, count, now, max_age_ms, exc)
            return entry.bars.tail(count).aged(entry.checked_ms, 0), "miss"

    @staticmethod
    def _fresh(entry: _Entry, timeframe: Timeframe, now: int, count: int) -> bool:
        # No bar can have closed since the check while the same bar is forming.
        return (
            entry.checked_ms >= 0
            and timeframe.open_of(entry.checked_ms) == timeframe.open_of(now)
            and entry.checked_ms <= now
            and (len(entry.bars) >= count or entry.complete)
        )

    def _refresh(self, entry: _Entry, symbol: str, timeframe: Timeframe, count: int) -> None:
        checked = self.source.now_ms()  # before the fetch: a bar closing during it is fetched next time
        have = entry.bars
        if entry.checked_ms >= 0 and len(have) > 0 and (len(have) >= count or entry.complete):
            new = self.source.closed_bars(symbol, timeframe, count, after_ms=int(have.time_ms[-1]))
            if len(new) >= count:  # as many closed since as asked for: maybe more between; keep these
                merged, complete = new, False
            else:
                merged, complete = (Bars.concat([have, new]) if len(new) else have), entry.complete
        else:
            merged = self.source.closed_bars(symbol, timeframe, count)
            complete = len(merged) < count
        entry.bars = merged.tail(min(MAX_BARS, len(merged)))
        entry.checked_ms = checked
        entry.complete = complete

    def _stale(
        self,
        entry: _Entry,
        symbol: str,
        timeframe: Timeframe,
        count: int,
        now: int,
        max_age_ms: int,
        exc: FeedUnavailable,
    ) -> tuple[Bars, str]:
        what = f"{symbol} {timeframe.name} bars"
        if entry.checked_ms < 0 or len(entry.bars) < min(count, 1):
            self.metrics.cache.labels("refused").inc()
            raise FeedUnavailable(f"{what}: nothing cached and the source failed: {exc}") from exc
        age = now - entry.checked_ms
        limit = min(max_age_ms, self.max_stale_ms)
        if age > limit:
            self.metrics.cache.labels("refused").inc()
            raise StaleData(f"{what} (the source failed: {exc})", age, limit) from exc
        return entry.bars.tail(count).aged(entry.checked_ms, age), "stale"
