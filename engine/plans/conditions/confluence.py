"""Multi-timeframe confluence: one condition that must hold on two (or three) timeframes
within a window, e.g. an M5 and an M15 change of character within 30 minutes.

Parameters: `condition` (the inner condition object, every parameter but `timeframe`),
`timeframes` (a list of 2..3 different timeframes), `window_min` (30, 1..1440).
TRUE when the inner condition was TRUE on every timeframe at some bar close of that
timeframe within the last `window_min` minutes (or now); FALSE when on some timeframe it
was FALSE at every such close; otherwise UNKNOWN (a timeframe with no data says nothing).

Statelessly causal: the past closes are evaluated again on the snapshot cut at each close
(`AsOf`: only the bars closed by then, ticks and the book only for now), so the answer
depends on the bars up to now alone and survives a failover. Its needs() is the union of
the inner condition's on each timeframe; it is not a guard itself (an inner guard's
UNKNOWN still makes this UNKNOWN, which blocks a required condition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.market.base import Bars, MarketDataError, Tick, Timeframe
from engine.plans.conditions.base import BookLevel, Condition, NewsEvent, Pattern, Reading, Snapshot, Truth, register
from engine.plans.conditions.fields import Fields, parser

MINUTE_MS = 60_000


class AsOf:
    """The snapshot as it was at `now_ms` (a bar close at or before the real now)."""

    def __init__(self, snapshot: Snapshot, now_ms: int) -> None:
        self.inner = snapshot
        self.now_ms = now_ms

    def bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        behind = max(0, self.inner.now_ms - self.now_ms) // timeframe.ms + 1
        bars = self.inner.bars(symbol, timeframe, count + behind).closed()
        keep = int(((bars.time_ms + timeframe.ms) <= self.now_ms).sum())
        return bars.slice(max(0, keep - count), keep, forming=False)

    def tick(self, symbol: str) -> Tick:
        if self.now_ms != self.inner.now_ms:
            raise MarketDataError(f"{symbol}: no tick kept for a past instant")
        return self.inner.tick(symbol)

    def book(self, symbol: str) -> list[BookLevel] | None:
        if self.now_ms != self.inner.now_ms:
            raise MarketDataError(f"{symbol}: no order book kept for a past instant")
        return self.inner.book(symbol)

    def news(self, from_ms: int, to_ms: int) -> list[NewsEvent]:
        return self.inner.news(from_ms, to_ms)


def instants(now_ms: int, timeframe: Timeframe, window_ms: int) -> list[int]:
    """Now and every close of `timeframe` in the window before it, newest first."""
    out = [now_ms]
    close = timeframe.open_of(now_ms)
    if close == now_ms:
        close -= timeframe.ms
    while close > now_ms - window_ms:
        out.append(close)
        close -= timeframe.ms
    return out


@dataclass(frozen=True)
class Confluence:
    type: ClassVar[str] = "confluence"
    guard: ClassVar[bool] = False
    timeframes: tuple[Timeframe, ...]
    window_min: int
    inner: tuple[Condition, ...]  # the inner condition on each timeframe, in order

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return sorted({need for c in self.inner for need in c.needs()}, key=lambda n: (n[0], n[1].value if n[1] else 0))

    def to_json(self) -> dict[str, object]:
        inner = {k: v for k, v in self.inner[0].to_json().items() if k != "timeframe"}
        return {
            "type": self.type,
            "timeframes": [t.name for t in self.timeframes],
            "window_min": self.window_min,
            "condition": inner,
        }

    def evaluate(self, snapshot: Snapshot) -> Reading:
        window_ms = self.window_min * MINUTE_MS
        per_tf: list[tuple[Timeframe, Truth, str]] = []
        patterns: dict[tuple[str, Timeframe, str, int], Pattern] = {}  # by pattern_history's unique key
        oldest: int | None = None
        for tf, condition in zip(self.timeframes, self.inner, strict=True):
            truth, detail = Truth.FALSE, ""
            for at in instants(snapshot.now_ms, tf, window_ms):
                view: Snapshot = snapshot if at == snapshot.now_ms else AsOf(snapshot, at)
                reading = condition.evaluate(view)
                for p in reading.patterns:
                    patterns.setdefault((p.symbol, p.timeframe, p.kind, p.bar_ms), p)
                if reading.truth is Truth.TRUE:
                    truth, detail = Truth.TRUE, reading.detail
                    if reading.age_ms is not None:
                        oldest = max(oldest or 0, reading.age_ms + snapshot.now_ms - at)
                    break
                if reading.truth is Truth.UNKNOWN or not detail:
                    detail = reading.detail
                if reading.truth is Truth.UNKNOWN:
                    truth = Truth.UNKNOWN
            per_tf.append((tf, truth, detail))
        truths = {t for _, t, _ in per_tf}
        overall = Truth.FALSE if Truth.FALSE in truths else Truth.UNKNOWN if Truth.UNKNOWN in truths else Truth.TRUE
        shown = ", ".join(f"{tf.name} {t.value}" for tf, t, _ in per_tf)
        why = next((d for _, t, d in per_tf if t is overall and overall is not Truth.TRUE), "")
        return Reading(
            overall,
            f"{self.inner[0].type} within {self.window_min} min: {shown}" + (f" ({why})" if why else ""),
            value=shown,
            threshold=f"all within {self.window_min} min",
            age_ms=oldest,
            patterns=tuple(patterns.values()),
        )


@register(Confluence.type)
@parser
def _confluence(f: Fields) -> Condition:
    timeframes = f.timeframes("timeframes", 2, 3)
    window = f.integer("window_min", 30, 1, 1440)
    inner = f.on_timeframes("condition", timeframes)  # read even when the timeframes are bad
    return Confluence(timeframes, window, tuple(inner))
