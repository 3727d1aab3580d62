"""One condition's evaluation, per type, on sim EURUSD bars with its default parameters
(the structure detectors scan 200 bars): the evaluator's cost of one affected plan with
one condition, the bars already read (a snapshot over arrays read once). `first` is the
first plan on a bar close with nothing cached (the structure scan, the indicators
computed), `live` the
same in a run where the previous closes were evaluated (a confluence's past closes are
then cached), `shared` every further plan reading the same bars. Prints median and p99.

    python -m bench.conditions [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np

from engine.market.base import Bars, MarketDataError, Tick, Timeframe
from engine.market.sim import SimSource
from engine.plans.conditions import confluence, momentum, orderflow, structure, volatility  # noqa: F401 (register)
from engine.plans.conditions.base import PARSERS, BookLevel, NewsEvent

BASE = {"symbol": "EURUSD", "timeframe": "M5"}
TYPES: list[dict[str, Any]] = [
    {"type": "inside_bars", **BASE},
    {"type": "fractal_expansion", **BASE},
    {"type": "atr_ratio", **BASE, "above": "1.5"},
    {"type": "bollinger_squeeze", **BASE, "percentile_below": "10"},
    {"type": "swing_structure", **BASE, "trend": "up"},
    {"type": "break_of_structure", **BASE, "direction": "up"},
    {"type": "change_of_character", **BASE, "direction": "down"},
    {"type": "order_block", **BASE, "direction": "up"},
    {"type": "fair_value_gap", **BASE, "direction": "up"},
    {"type": "breaker_retest", **BASE, "direction": "down"},
    {"type": "liquidity_sweep", **BASE, "side": "high"},
    {"type": "mitigation_cascade", **BASE, "direction": "up"},
    {"type": "tick_volume_imbalance", **BASE, "above": "0.2"},
    {"type": "rsi_divergence", **BASE, "direction": "bearish"},
    {"type": "momentum_decay", **BASE, "direction": "up"},
    {"type": "news_filter", "currencies": ["EUR", "USD"]},
    {
        "type": "confluence",
        "timeframes": ["M5", "M15"],
        "window_min": 30,
        "condition": {"type": "change_of_character", "symbol": "EURUSD", "direction": "down"},
    },
]


class ArraySnapshot:
    """Bars read once from the sim; each instant serves the closed ones up to it."""

    def __init__(self, series: dict[Timeframe, Bars]) -> None:
        self.series = series
        self.now_ms = 0

    def bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        full = self.series[timeframe]
        n = int(np.searchsorted(full.time_ms + timeframe.ms, self.now_ms, side="right"))
        return full.slice(max(0, n - count), n, forming=False)

    def tick(self, symbol: str) -> Tick:
        raise MarketDataError("no ticks in this benchmark")

    def book(self, symbol: str) -> list[BookLevel] | None:
        return None

    def news(self, from_ms: int, to_ms: int) -> list[NewsEvent]:
        return []


CACHES = (structure._scan, volatility._atr, volatility.band_widths, momentum.rsi_series)


def _forget() -> None:
    for cache in CACHES:
        cache.cache_clear()


def _stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"median {statistics.median(xs) * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    sim = SimSource(seed=1, clock=lambda: 1_767_607_200_000)  # 2026-01-05 10:00 UTC
    snapshot = ArraySnapshot({tf: sim.closed_bars("EURUSD", tf, 2000) for tf in (Timeframe.M5, Timeframe.M15)})
    m5 = snapshot.series[Timeframe.M5]
    closes = [int(t) + Timeframe.M5.ms for t in m5.time_ms[-args.rounds :]]
    for obj in TYPES:
        condition = PARSERS[obj["type"]](obj, "bench")
        first, live, shared, truths = [], [], [], set()
        for close in closes:  # one evaluation per M5 close, as the evaluator runs them
            snapshot.now_ms = close
            _forget()
            t = time.perf_counter()
            reading = condition.evaluate(snapshot)
            first.append(time.perf_counter() - t)
            t = time.perf_counter()
            condition.evaluate(snapshot)
            shared.append(time.perf_counter() - t)
            truths.add(reading.truth.value)
        _forget()
        for close in closes:
            snapshot.now_ms = close
            t = time.perf_counter()
            condition.evaluate(snapshot)
            live.append(time.perf_counter() - t)
        print(f"{obj['type']:<22} first {_stats(first)}; live {_stats(live)}; shared {_stats(shared)}")
        print(f"{'':<22} ({'/'.join(sorted(truths))})")
    print(f"({len(closes)} M5 closes each; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
