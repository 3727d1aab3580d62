"""engine.positions.indicators: the ATR against a hand-computed Wilder ATR, and the swing
for causality: closed bars only, and bars fed one at a time only ever add swings."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.market.base import Bars, Timeframe
from engine.model import Side
from engine.positions.indicators import atr, atr_bars, last_swing, swings

D = Decimal


def bars_of(rows: list[tuple[int, int, int, int]], digits: int = 2, forming: bool = False) -> Bars:
    n = len(rows)
    columns = [np.array([i * 60_000 for i in range(n)], dtype=np.int64)]
    columns += [np.array([r[k] for r in rows], dtype=np.int64) for k in range(4)]
    columns += [np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)]
    return Bars.of_columns("SYM", Timeframe.M1, digits, columns, forming=forming)


# (open, high, low, close) in points. True ranges: 3, max(4, 3, 1) = 4, max(2, 0, 2) = 2,
# max(5, 5, 0) = 5, max(1, 0, 1) = 1.
ROWS = [(10, 12, 9, 11), (11, 14, 10, 13), (13, 13, 11, 12), (12, 17, 12, 16), (16, 16, 15, 15)]


def test_atr_matches_wilder_by_hand() -> None:
    assert atr(bars_of(ROWS[:2]), 3) is None
    assert atr(bars_of(ROWS[:3]), 3) == D("0.03")  # (3 + 4 + 2) / 3 points
    four = atr(bars_of(ROWS[:4]), 3)  # (3 x 2 + 5) / 3 = 11/3 points
    five = atr(bars_of(ROWS), 3)  # (11/3 x 2 + 1) / 3 = 25/9 points
    assert four is not None and abs(four - D(11) / 3 / 100) < D("1e-15")
    assert five is not None and abs(five - D(25) / 9 / 100) < D("1e-15")
    assert type(five) is Decimal


def test_atr_ignores_the_forming_bar() -> None:
    assert atr(bars_of([*ROWS[:3], (12, 90, 1, 50)], forming=True), 3) == D("0.03")
    assert atr_bars(14) == 141


def test_swing_low_is_confirmed_only_after_its_right_bars_close() -> None:
    lows = [5, 4, 3, 4, 5, 2, 3]
    rows = [(low + 1, low + 2, low, low + 1) for low in lows]
    assert last_swing(bars_of(rows[:4], digits=1), 2, Side.BUY) is None  # bar 2 has one bar to its right
    assert last_swing(bars_of(rows[:5], digits=1), 2, Side.BUY) == D("0.3")
    # The same five bars with the last one still forming: not confirmed yet.
    assert last_swing(bars_of(rows[:5], digits=1, forming=True), 2, Side.BUY) is None
    assert last_swing(bars_of(rows, digits=1), 2, Side.BUY) == D("0.3")  # bar 5 (2) lacks its right bars


def test_swing_high_for_a_sell() -> None:
    highs = [5, 6, 8, 7, 6, 7]
    rows = [(h - 1, h, h - 2, h - 1) for h in highs]
    assert swings(bars_of(rows, digits=0), 2, Side.SELL) == [(120_000, D(8))]


@settings(deadline=None, derandomize=True, database=None, max_examples=60)
@given(
    st.lists(st.tuples(st.integers(100, 120), st.integers(0, 10)), min_size=1, max_size=60),
    st.integers(1, 4),
    st.sampled_from([Side.BUY, Side.SELL]),
)
def test_feeding_bars_one_at_a_time_never_rewrites_a_swing(
    shape: list[tuple[int, int]], width: int, side: Side
) -> None:
    rows = [(low + 1, low + span, low, low + 1) for low, span in shape]
    before: list[tuple[int, Decimal]] = []
    for k in range(1, len(rows) + 1):
        now = swings(bars_of(rows[:k]), width, side)
        assert now[: len(before)] == before
        assert last_swing(bars_of(rows[:k]), width, side) == (now[-1][1] if now else None)
        assert len(now) - len(before) <= 1  # one new closed bar confirms at most one swing
        # A forming bar (the same rows, the last one unclosed) adds nothing.
        assert swings(bars_of(rows[:k], forming=True), width, side) == swings(bars_of(rows[: k - 1]), width, side)
        before = now
