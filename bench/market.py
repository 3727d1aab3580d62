"""Sim source timings: a tick lookup (each at the next 250 ms step, as a live reader would
ask) and bars(M1, 500), cold (a fresh process's first read of a window) and through the
Market facade's cache. Prints median and p99.

    python -m bench.market [--rounds 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from prometheus_client import CollectorRegistry

from engine.market.base import Timeframe
from engine.market.metrics import MarketMetrics
from engine.market.service import Market
from engine.market.sim import SimSource, wall_ms


def _stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"median {statistics.median(xs) * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms (n={len(xs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    now = [wall_ms()]
    sim = SimSource(seed=1, clock=lambda: now[0])
    start = time.perf_counter()
    sim.tick("EURUSD")
    print(f"start-up (a year of daily shocks, first tick): {(time.perf_counter() - start) * 1000:.1f} ms")

    ticks = []
    for _ in range(args.rounds):
        now[0] += 250
        t = time.perf_counter()
        sim.tick("EURUSD")
        ticks.append(time.perf_counter() - t)
    print(f"tick(EURUSD), a new 250 ms step each:   {_stats(ticks)}")
    fresh = []
    for _ in range(args.rounds):
        now[0] += 60_000  # a minute no read has touched: its 240 ticks are computed
        t = time.perf_counter()
        sim.tick("EURUSD")
        fresh.append(time.perf_counter() - t)
    print(f"tick(EURUSD), a new minute each:        {_stats(fresh)}")

    symbols = sim.symbols()
    cold = []
    for k in range(args.rounds // 10):
        now[0] += 3 * 3_600_000  # a window no read has touched
        t = time.perf_counter()
        sim.closed_bars(symbols[k % len(symbols)], Timeframe.M1, 500)
        cold.append(time.perf_counter() - t)
    print(f"bars(M1, 500) from the source, cold:     {_stats(cold)}")

    market = Market(sim, metrics=MarketMetrics(CollectorRegistry()))
    cached = []
    for _ in range(args.rounds):
        now[0] += 250
        t = time.perf_counter()
        market.bars("EURUSD", "M1", 500, max_age_ms=1000)
        cached.append(time.perf_counter() - t)
    print(f"Market.bars(M1, 500), cache + forming:   {_stats(cached)}")
    for tf in (Timeframe.H1, Timeframe.D1):
        now[0] += 86_400_000 * 3
        t = time.perf_counter()
        sim.closed_bars("EURUSD", tf, 500)
        print(f"bars({tf.name}, 500) from the source, cold:     {(time.perf_counter() - t) * 1000:.1f} ms")
    print(f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
