"""Volatility patterns on hand-made bars: inside bars, fractal expansion, the ATR ratio and
the Bollinger squeeze, their parameters refused by name, UNKNOWN on missing or stale data,
and the replay (a reading on the bars so far equals the reading on the full series then)."""

from __future__ import annotations

import random

from engine.market.base import Timeframe
from engine.plans.conditions.base import Truth
from tests.conditions_support import FakeSnapshot, bars_of, close_of, closes, parse, refused, replay, snapshot_at

M5 = {"symbol": "EURUSD", "timeframe": "M5"}

# A mother bar, two bars inside it (each inside the one before), then a wide bar up
NESTED = bars_of(
    [
        (10000, 10050, 9950, 10010),
        (10010, 10200, 9800, 10100),  # the mother bar
        (10100, 10150, 9850, 9900),
        (9900, 10100, 9900, 10050),  # high 10100 <= 10150, low 9900 >= 9850
        (10050, 10400, 9990, 10390),  # range 410, closes above every bar before it
    ]
)


def walk(n: int, seed: int, step: int = 30) -> list[int]:
    rnd = random.Random(seed)
    values = [10000]
    for _ in range(n - 1):
        values.append(values[-1] + rnd.randint(-step, step))
    return values


def test_inside_bars_counts_consecutive_nested_bars() -> None:
    two = parse({"type": "inside_bars", **M5, "count": 2})
    assert two.evaluate(snapshot_at(NESTED, 3)).truth is Truth.TRUE
    reading = two.evaluate(snapshot_at(NESTED, 2))
    assert (reading.truth, reading.value) == (Truth.FALSE, "1")
    assert two.evaluate(snapshot_at(NESTED, 4)).truth is Truth.FALSE  # the wide bar ends the run
    assert parse({"type": "inside_bars", **M5, "count": 1}).evaluate(snapshot_at(NESTED, 2)).truth is Truth.TRUE


def test_fractal_expansion_wants_range_and_the_breakout_direction() -> None:
    up = parse({"type": "fractal_expansion", **M5, "bars": 3, "ratio": "1.5", "direction": "up"})
    reading = up.evaluate(snapshot_at(NESTED, 4))
    # newest range 410; the three before: 400, 300, 200 -> mean 300; 410 / 300 = 1.37
    assert (reading.truth, reading.value) == (Truth.FALSE, "1.37")
    lower = parse({"type": "fractal_expansion", **M5, "bars": 3, "ratio": "1.3", "direction": "up"})
    assert lower.evaluate(snapshot_at(NESTED, 4)).truth is Truth.TRUE
    down = parse({"type": "fractal_expansion", **M5, "bars": 3, "ratio": "1.3", "direction": "down"})
    assert down.evaluate(snapshot_at(NESTED, 4)).truth is Truth.FALSE


def test_atr_ratio_sees_expansion_and_compression() -> None:
    # 60 quiet bars (range 20 each), then 5 wide ones (range 200)
    quiet = [(10000, 10010, 9990, 10000)] * 60
    wide = [(10000, 10100, 9900, 10000)] * 5
    bars = bars_of(quiet + wide)
    expanding = parse({"type": "atr_ratio", **M5, "short": 5, "long": 20, "above": "2"})
    reading = expanding.evaluate(snapshot_at(bars, 64))
    assert reading.truth is Truth.TRUE
    # ATR(5) is 200 (five wide bars); ATR(20) Wilder over 60 quiet then 5 wide bars
    assert reading.value is not None and 2 < float(reading.value) < 10
    compressing = parse({"type": "atr_ratio", **M5, "short": 5, "long": 20, "below": "1"})
    assert compressing.evaluate(snapshot_at(bars, 64)).truth is Truth.FALSE
    assert compressing.evaluate(snapshot_at(bars, 59)).value == "1.0000"  # all quiet: equal ATRs
    flat = bars_of([(10000, 10000, 10000, 10000)] * 60)
    assert compressing.evaluate(snapshot_at(flat, 59)).truth is Truth.UNKNOWN  # no range at all: ATR 0
    assert expanding.evaluate(snapshot_at(bars, 30)).truth is Truth.UNKNOWN  # 31 bars, 60 needed


def test_bollinger_squeeze_ranks_the_band_width() -> None:
    # a noisy stretch ending at c, then calm closes c, c+1, c, ...: the seven bands over closes
    # of c and c+1 only are the narrowest of the 50, so the newest ranks at 7 / 50 = 14 %
    noisy = closes(walk(60, seed=3, step=60))
    calm = [(noisy[-1][3], noisy[-1][3] + 2, noisy[-1][3] - 2, noisy[-1][3] + (i % 2)) for i in range(25)]
    bars = bars_of(noisy + calm)
    squeeze = parse({"type": "bollinger_squeeze", **M5, "period": 20, "lookback": 50, "percentile_below": "15"})
    reading = squeeze.evaluate(snapshot_at(bars, len(bars) - 1))
    assert (reading.truth, reading.value) == (Truth.TRUE, "14.00")
    assert squeeze.evaluate(snapshot_at(bars, 68)).truth is Truth.FALSE  # still noisy
    narrow = parse({"type": "bollinger_squeeze", **M5, "width_below": "0.1"})
    assert narrow.evaluate(snapshot_at(bars, len(bars) - 1)).truth is Truth.TRUE
    assert narrow.to_json()["width_below"] == "0.1"


def test_bad_parameters_are_refused_each_by_name() -> None:
    errors = refused({"type": "atr_ratio", "timeframe": "M7", "short": 30, "above": 1.5, "below": "1", "colour": 1})
    text = "; ".join(errors)
    for field in ("symbol", "timeframe", "short", "above", "colour"):
        assert f"conditions.{field}" in text, field
    assert "exactly one of above, below" in text
    assert "conditions.count" in "; ".join(refused({"type": "inside_bars", **M5, "count": 0}))
    assert "conditions.direction" in "; ".join(refused({"type": "fractal_expansion", **M5, "direction": "sideways"}))
    for odd in ("NaN", "Infinity", "1_000", "\u0661", "1e3", 1.5, True, ""):
        assert refused({"type": "fractal_expansion", **M5, "ratio": odd}) == [
            f"conditions.ratio: a decimal number as a string is required, got {odd!r}"
        ], odd
    assert parse({"type": "fractal_expansion", **M5, "ratio": " 2. "}).to_json()["ratio"] == "2"
    errors = refused({"type": "bollinger_squeeze", **M5, "percentile_below": "101", "max_age_ms": -1})
    assert any(".percentile_below" in e for e in errors) and any(".max_age_ms" in e for e in errors)


def test_missing_or_stale_bars_are_unknown() -> None:
    inside = parse({"type": "inside_bars", **M5, "count": 2, "max_age_ms": 60_000})
    stale = snapshot_at(NESTED, 3)
    stale.now_ms += 61_000  # the newest closed bar closed 61 s ago
    reading = inside.evaluate(stale)
    assert reading.truth is Truth.UNKNOWN and reading.age_ms == 61_000
    down = snapshot_at(NESTED, 3)
    down.down = True
    assert "feed down" in inside.evaluate(down).detail
    other = parse({"type": "inside_bars", "symbol": "GBPUSD", "timeframe": "M5"})
    assert other.evaluate(snapshot_at(NESTED, 3)).truth is Truth.UNKNOWN
    assert inside.evaluate(FakeSnapshot(close_of(NESTED, 0), {("EURUSD", Timeframe.M5): NESTED})).truth is Truth.UNKNOWN


def test_volatility_readings_replay_bar_by_bar() -> None:
    bars = bars_of(closes(walk(90, seed=7)))
    for obj in (
        {"type": "inside_bars", **M5, "count": 1},
        {"type": "fractal_expansion", **M5, "bars": 4, "ratio": "1.2"},
        {"type": "atr_ratio", **M5, "short": 3, "long": 10, "above": "1"},
        {"type": "bollinger_squeeze", **M5, "period": 10, "lookback": 20, "percentile_below": "25"},
    ):
        readings = replay(parse(obj), [bars])
        assert {r.truth for r in readings} >= {Truth.TRUE, Truth.FALSE}, obj


def test_json_round_trip_keeps_meaning() -> None:
    for obj in (
        {"type": "inside_bars", **M5, "count": 3},
        {"type": "atr_ratio", **M5, "below": "0.8"},
        {"type": "bollinger_squeeze", **M5, "percentile_below": "5"},
        {"type": "fractal_expansion", **M5, "direction": "down"},
    ):
        c = parse(obj)
        assert parse(c.to_json()).to_json() == c.to_json()
        assert c.needs() == [("EURUSD", Timeframe.M5)]


def test_symbols_are_read_as_a_signal_reads_them() -> None:
    assert parse({"type": "inside_bars", "symbol": " eurusd.m ", "timeframe": "m5"}).to_json()["symbol"] == "EURUSD.M"
    assert "conditions.symbol" in "; ".join(refused({"type": "inside_bars", "symbol": "straße", "timeframe": "M5"}))
    assert "conditions.symbol" in "; ".join(refused({"type": "inside_bars", "symbol": 7, "timeframe": "M5"}))
    assert refused({"type": "inside_bars", "symbol": "X", "timeframe": "M5", "count": True}) == [
        "conditions.count: an integer 1..50 is required, got True"
    ]
