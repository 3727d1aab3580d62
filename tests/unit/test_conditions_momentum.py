"""Adaptive and momentum conditions: the news filter (FALSE around a high-impact event,
UNKNOWN when the news source fails), RSI divergence on a hand-made rally that runs out of
strength, momentum decay, their parameters refused by name, and the replay."""

from __future__ import annotations

from engine.market.base import Timeframe
from engine.plans.conditions.base import NewsEvent, Truth
from tests.conditions_support import T0, FakeSnapshot, bars_of, parse, refused, replay, snapshot_at

MINUTE = 60_000
M5 = {"symbol": "EURUSD", "timeframe": "M5"}

EVENTS = [
    NewsEvent(T0 + 20 * MINUTE, "EUR", "high", "ECB rate decision"),
    NewsEvent(T0, "USD", "medium", "Jobless claims"),
]
NEWS = {"type": "news_filter", "currencies": ["eur", "USD"], "before_min": 30, "after_min": 15}


def news_at(now_ms: int, *, down: bool = False) -> FakeSnapshot:
    return FakeSnapshot(now_ms, events=EVENTS, news_down=down)


def test_news_filter_blocks_around_a_high_impact_event() -> None:
    c = parse(NEWS)
    blocked = c.evaluate(news_at(T0))
    assert blocked.truth is Truth.FALSE and "ECB rate decision" in blocked.detail  # 20 min before it
    assert c.evaluate(news_at(T0 + 35 * MINUTE)).truth is Truth.FALSE  # 15 min after it
    assert c.evaluate(news_at(T0 + 36 * MINUTE)).truth is Truth.TRUE
    assert c.evaluate(news_at(T0 - 11 * MINUTE)).truth is Truth.TRUE  # 31 min before; the USD one is medium
    medium = parse({**NEWS, "impact": ["high", "medium"]})
    assert medium.evaluate(news_at(T0 - 11 * MINUTE)).truth is Truth.FALSE
    only_gbp = parse({**NEWS, "currencies": ["GBP"]})
    assert only_gbp.evaluate(news_at(T0)).truth is Truth.TRUE


def test_news_filter_fails_closed_when_the_source_fails() -> None:
    c = parse(NEWS)
    reading = c.evaluate(news_at(T0, down=True))
    assert reading.truth is Truth.UNKNOWN and "news source unreachable" in reading.detail
    assert c.guard and c.needs() == []
    assert c.to_json() == {**NEWS, "currencies": ["EUR", "USD"], "impact": ["high"]}


def moves(closes: list[int]) -> list[tuple[int, int, int, int]]:
    """Bars from close to close: an up bar's wick above its close, a down bar's below it, so
    the bar at a turn stands alone as the swing."""
    rows, prev = [], closes[0]
    for c in closes:
        rows.append((prev, c + 1, prev, c) if c >= prev else (prev, prev, c - 1, c))
        prev = c
    return rows


# a fast rally to 120 (bar 9), a pull-back, a slow climb to a higher high 121 (bar 14), down
RALLY = [100, 99, 98, 97, 96, 95, 94, 100, 110, 120, 112, 108, 110, 114, 121, 115, 110]
RSI = {"type": "rsi_divergence", **M5, "direction": "bearish", "period": 3, "k": 1, "lookback": 16, "within": 2}


def test_rsi_divergence_higher_high_with_a_lower_rsi() -> None:
    bars = bars_of(moves(RALLY))
    c = parse(RSI)
    reading = c.evaluate(snapshot_at(bars, 15))  # bar 15 confirms the swing at 14
    assert reading.truth is Truth.TRUE, reading.detail
    assert reading.value is not None and reading.value.startswith("price 1.21 -> 1.22, RSI(3) ")
    first, second = (float(x) for x in reading.value.split("RSI(3) ")[1].split(" -> "))
    assert first > 90 > second
    assert [(p.kind, p.bar_ms) for p in reading.patterns] == [("rsi_divergence_bearish", T0 + 14 * 300_000)]
    assert c.evaluate(snapshot_at(bars, 16)).truth is Truth.TRUE  # confirmed one bar ago, within 2
    assert c.evaluate(snapshot_at(bars, 16)).patterns == ()
    assert parse({**RSI, "within": 1}).evaluate(snapshot_at(bars, 16)).truth is Truth.FALSE
    assert parse({**RSI, "lookback": 17}).evaluate(snapshot_at(bars, 15)).truth is Truth.UNKNOWN  # 16 bars
    mirrored = bars_of(moves([200 - x for x in RALLY]))
    bullish = parse({**RSI, "direction": "bullish"})
    assert bullish.evaluate(snapshot_at(mirrored, 15)).truth is Truth.TRUE
    assert bullish.evaluate(snapshot_at(bars, 15)).truth is Truth.FALSE


def test_momentum_decay_still_rising_but_slower() -> None:
    bars = bars_of(moves([100, 110, 125, 135, 142, 146, 148]))
    c = parse({"type": "momentum_decay", **M5, "direction": "up", "period": 1, "bars": 3})
    # momentum 10, 15, 10, 7, 4, 2: shrinking three bars running from bar 5 on
    assert [c.evaluate(snapshot_at(bars, i)).truth for i in range(3, 7)] == [
        Truth.UNKNOWN,
        Truth.FALSE,
        Truth.TRUE,
        Truth.TRUE,
    ]
    assert c.evaluate(snapshot_at(bars, 6)).value == "0.10 -> 0.07 -> 0.04 -> 0.02"
    down = parse({"type": "momentum_decay", **M5, "direction": "down", "period": 1, "bars": 3})
    assert down.evaluate(snapshot_at(bars, 6)).truth is Truth.FALSE


def test_momentum_readings_replay_bar_by_bar() -> None:
    # the rally, its mirror (bars 17..33) and a rise that slows (34..39)
    bars = bars_of(moves(RALLY + [200 - x for x in RALLY] + [100, 104, 110, 114, 116, 117]))
    decay = {"type": "momentum_decay", **M5, "direction": "up", "period": 1}
    for obj, true_at in ((RSI, [15, 16]), ({**RSI, "direction": "bullish"}, [32, 33]), (decay, [39])):
        readings = replay(parse(obj), [bars])
        assert [i for i, r in enumerate(readings) if r.truth is Truth.TRUE] == true_at, obj


def test_bad_momentum_parameters_are_refused_by_name() -> None:
    errors = "; ".join(refused({"type": "news_filter", "currencies": ["EURO"], "impact": ["huge"], "before_min": -1}))
    for name in ("currencies", "impact", "before_min"):
        assert f"conditions.{name}" in errors, name
    assert "conditions.currencies" in "; ".join(refused({"type": "news_filter"}))
    errors = "; ".join(refused({**RSI, "direction": "up", "period": 1, "lookback": 10}))
    assert "conditions.direction" in errors and "conditions.period" in errors
    assert "conditions.lookback" in "; ".join(refused({**RSI, "period": 10, "lookback": 10}))
    assert "conditions.bars" in "; ".join(refused({"type": "momentum_decay", **M5, "direction": "up", "bars": 0}))
    assert parse(RSI).needs() == [("EURUSD", Timeframe.M5)]
