"""What the rules cost the manager's loop: decide (every rule on, a random walk of prices),
failsafe.check, and the trailing inputs (the ATR over atr_bars(14) bars, the last swing over
200), each per call, and decide + check for 500 positions, a loop's worth. Median and p99.

    python -m bench.rules [--rounds 2000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from bench.stats import nearest_rank
from engine.brokers.base import SymbolSpec
from engine.market.base import Bars, Timeframe
from engine.model import Side
from engine.positions.failsafe import check
from engine.positions.indicators import atr, atr_bars, last_swing
from engine.positions.rules import Held, TrailState, decide, parse_manage

RULES = parse_manage(
    {
        "breakeven": {"at_rr": 1, "offset_points": 10},
        "trailing": {"distance_points": 150, "activation_rr": 1.5},
        "lock": [[2, 1], [3, 2]],
        "partial": {"at_rr": 2, "fraction": 0.5},
    }
)
SPEC = SymbolSpec(tick_size=Decimal("0.00001"), tick_value=Decimal("1"))
POINT = Decimal("0.00001")


@dataclass
class _Position:
    held: Held
    state: TrailState
    stop: Decimal
    at: int  # the price in points


def _line(name: str, samples: list[float], unit: str = "us") -> None:
    scale = 1e6 if unit == "us" else 1e3
    p50, p99 = nearest_rank(samples, 50) * scale, nearest_rank(samples, 99) * scale
    print(f"{name:<40} median {p50:8.1f} {unit}, p99 {p99:8.1f} {unit} (n={len(samples)})")


def _timed(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _bars(count: int, rng: random.Random) -> Bars:
    close = np.cumsum(np.array([rng.randint(-30, 30) for _ in range(count)], dtype=np.int64)) + 110_000
    high = close + np.array([rng.randint(0, 40) for _ in range(count)], dtype=np.int64)
    low = close - np.array([rng.randint(0, 40) for _ in range(count)], dtype=np.int64)
    times = np.arange(count, dtype=np.int64) * 60_000
    zeros = np.zeros(count, dtype=np.int64)
    return Bars.of_columns("EURUSD", Timeframe.M1, 5, [times, close, high, low, close, zeros, zeros])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(1)
    positions: list[_Position] = []
    for k in range(500):
        side = Side.BUY if k % 2 else Side.SELL
        entry = Decimal(110_000 + rng.randint(-500, 500)) * POINT
        sl = entry - 200 * POINT if side is Side.BUY else entry + 200 * POINT
        held = Held(str(k), "EURUSD", side, entry, sl, Decimal("1.00"), POINT)
        positions.append(_Position(held, TrailState(), sl, 110_000))

    def step(p: _Position) -> None:
        held = p.held
        p.at += rng.randint(-20, 25) * (1 if held.side is Side.BUY else -1)
        d = decide(held, RULES, p.state, Decimal(p.at) * POINT, p.stop)
        check(held.side, held.entry, held.volume, p.stop, d.stop, SPEC, Decimal(1000))
        p.state, p.stop = d.state, d.stop

    def loop() -> None:
        for p in positions:
            step(p)

    one = positions[0]
    _line("decide + check, one position", _timed(lambda: step(one), args.rounds))
    held = one.held
    _line(
        "failsafe.check alone",
        _timed(lambda: check(held.side, held.entry, held.volume, one.stop, one.stop, SPEC, Decimal(1000)), args.rounds),
    )
    loops = _timed(loop, max(10, args.rounds // 20))
    _line("decide + check, 500 positions (a loop)", loops, unit="ms")
    series = _bars(atr_bars(14), rng)
    _line(f"atr(14) over {len(series)} bars", _timed(lambda: atr(series, 14), args.rounds // 4))
    swings = _bars(200, rng)
    _line("last_swing(2) over 200 bars", _timed(lambda: last_swing(swings, 2, Side.BUY), args.rounds // 4))


if __name__ == "__main__":
    main()
