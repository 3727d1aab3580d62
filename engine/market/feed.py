"""Subscriptions: ticks and bar closes pushed to handlers by a pump.

`pump()` asks the source for what happened since the last pump (ticks after the last one
delivered, bars closed after the last close delivered) and hands each to its handlers in
time order. A thread (`FeedRunner`) or a test calls it. On a live source (sim, mt5) a
pump that fell behind by more than `max_backlog_ms` skips the older ticks (they would be
stale) and says so in the log; a replay delivers every tick; bar closes are never
skipped. A handler that raises is logged and does not stop the pump or the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from engine.market.base import (
    BarHandler,
    FeedUnavailable,
    Source,
    TickHandler,
    Timeframe,
    UnknownSymbol,
)

log = logging.getLogger("haexec.engine.market")

E = TypeVar("E")  # a tick or bars, as a subscriber takes it

TICK_LIMIT = 10_000  # per symbol per pump


@dataclass(eq=False)
class Subscription:
    symbols: frozenset[str]
    timeframes: frozenset[Timeframe]
    on_tick: TickHandler | None
    on_bar: BarHandler | None
    _feed: Feed = field(repr=False)

    def close(self) -> None:
        self._feed.unsubscribe(self)


class Feed:
    def __init__(self, source: Source, *, max_backlog_ms: int = 60_000, on_up: Callable[[bool], None] | None = None):
        self.source = source
        self.max_backlog_ms = max_backlog_ms
        self._on_up = on_up or (lambda ok: None)
        self._subs: list[Subscription] = []
        self._tick_cursor: dict[str, int] = {}
        self._bar_cursor: dict[tuple[str, Timeframe], int] = {}
        self._lock = threading.Lock()  # subscriptions
        self._pumping = threading.Lock()  # one pump at a time, so events stay in order
        self.error: str | None = None  # why the last pump failed; None after one that did not

    def subscribe(
        self,
        symbols: Iterable[str],
        *,
        on_tick: TickHandler | None = None,
        on_bar: BarHandler | None = None,
        timeframes: Iterable[Timeframe | str] = (Timeframe.M1,),
    ) -> Subscription:
        """Deliver ticks (on_tick) and closed bars (on_bar, one row each) that happen from
        now on. Raises UnknownSymbol / UnknownTimeframe before anything is subscribed."""
        wanted = frozenset(symbols)
        tfs = frozenset(Timeframe.parse(t) for t in timeframes)
        known = set(self.source.symbols())
        for s in sorted(wanted):
            if s not in known:
                raise UnknownSymbol(
                    f"unknown symbol {s!r}: the {self.source.name} source has {', '.join(sorted(known))}"
                )
        if on_tick is None and on_bar is None:
            raise ValueError("subscribe needs on_tick, on_bar or both")
        sub = Subscription(wanted, tfs if on_bar else frozenset(), on_tick, on_bar, self)
        now = self.source.now_ms()
        with self._lock:
            for s in wanted:
                self._tick_cursor.setdefault(s, now)
                for tf in sub.timeframes:
                    # The bar forming now is the first one delivered.
                    self._bar_cursor.setdefault((s, tf), tf.open_of(now) - tf.ms)
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def pump(self) -> int:
        """Deliver what is new; returns how many events were handed out."""
        with self._pumping:
            advance = getattr(self.source, "advance", None)
            if advance is not None:
                advance()
            with self._lock:
                subs = list(self._subs)
            delivered = 0
            try:
                delivered += self._pump_ticks(subs)
                delivered += self._pump_bars(subs)
            except FeedUnavailable as exc:
                self.error = str(exc)
                self._on_up(False)
                log.warning("market feed %s: %s", self.source.name, exc)
                return delivered
            self.error = None
            self._on_up(True)
            return delivered

    def _pump_ticks(self, subs: list[Subscription]) -> int:
        now = self.source.now_ms()
        live = getattr(self.source, "live", True)  # a replay delivers every event, however far behind
        delivered = 0
        for symbol in sorted({s for sub in subs if sub.on_tick for s in sub.symbols}):
            after = self._tick_cursor.get(symbol, now)
            if live and now - after > self.max_backlog_ms:
                log.warning(
                    "market feed %s: %s ticks of %.1f s skipped (the pump fell behind)",
                    self.source.name,
                    symbol,
                    (now - after - self.max_backlog_ms) / 1000,
                )
                after = now - self.max_backlog_ms
            ticks = self.source.ticks(symbol, after, now, TICK_LIMIT)
            handlers = [sub.on_tick for sub in subs if sub.on_tick and symbol in sub.symbols]
            for i in range(len(ticks)):
                tick = ticks.tick(i, age_ms=now - int(ticks.time_ms[i]))
                for handler in handlers:
                    delivered += self._call(handler, tick)
            if len(ticks):
                self._tick_cursor[symbol] = int(ticks.time_ms[-1])
            elif live and now - after >= self.max_backlog_ms:
                self._tick_cursor[symbol] = after
        return delivered

    def _pump_bars(self, subs: list[Subscription]) -> int:
        delivered = 0
        keys = sorted({(s, tf) for sub in subs if sub.on_bar for s in sub.symbols for tf in sub.timeframes}, key=str)
        for symbol, tf in keys:
            after = self._bar_cursor[(symbol, tf)]
            bars = self.source.closed_bars(symbol, tf, 1000, after_ms=after)
            handlers = [sub.on_bar for sub in subs if sub.on_bar and symbol in sub.symbols and tf in sub.timeframes]
            for i in range(len(bars)):
                one = bars.slice(i, i + 1, forming=False)
                for handler in handlers:
                    delivered += self._call(handler, one)
            if len(bars):
                self._bar_cursor[(symbol, tf)] = int(bars.time_ms[-1])
        return delivered

    @staticmethod
    def _call(handler: Callable[[E], None], event: E) -> int:
        try:
            handler(event)
        except Exception:  # one subscriber's bug must not starve the others
            log.exception("market data subscriber raised on %r", event)
        return 1


class FeedRunner:
    """Pumps a feed on its own thread every `interval_s` until stopped."""

    def __init__(self, feed: Feed, interval_s: float = 0.1) -> None:
        self.feed = feed
        self.interval_s = interval_s
        self.beat: Callable[[], None] = lambda: None  # a supervisor's heartbeat, once per pump
        self._stop = threading.Event()
        self._generation = 0
        self._thread = self._pumper()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def restart(self) -> None:
        """Replace the pumping thread. One stuck in a source call is abandoned: pumps are
        serialised, so it cannot pump beside its successor, and it exits once it returns."""
        old = self._thread
        self._generation += 1
        if old.is_alive():
            old.name = f"{old.name}-abandoned"
            log.error("market feed: thread %s abandoned (stuck); a new one takes over", old.name)
        self._thread = self._pumper()
        self._thread.start()

    def _pumper(self) -> threading.Thread:
        return threading.Thread(target=self._loop, args=(self._generation,), name="market-feed", daemon=True)

    def _loop(self, generation: int) -> None:
        while not self._stop.is_set() and generation == self._generation:
            self.beat()
            try:
                self.feed.pump()
            except Exception:  # a bug must not end the feed silently
                log.exception("market feed pump failed")
            self._stop.wait(self.interval_s)
