"""The price and correlation families on short hand-made bar sequences, the expected answer
written in each test; and the causality replay: bars fed one at a time never rewrite a
reading made on an earlier prefix."""

from __future__ import annotations

import pytest

from engine.market.base import Timeframe
from engine.plans.conditions.base import Condition, ConditionError, Truth
from engine.plans.conditions.registry import parse_condition, types
from tests.plans_support import FakeSnapshot, make_bars, tick

M5, M15, M1 = Timeframe.M5, Timeframe.M15, Timeframe.M1


def snap(symbol: str, tf: Timeframe, closes: list[str], age_ms: int = 0) -> FakeSnapshot:
    return FakeSnapshot(series={(symbol, tf): make_bars(symbol, tf, closes)}, age_ms=age_ms)


def cond(**obj: object) -> Condition:
    return parse_condition(obj, "c")


def test_every_family_of_this_branch_is_registered() -> None:
    assert {"price_above", "price_below", "crosses", "holds_above", "holds_below", "change_pct", "correlation"} <= set(
        types()
    )


def test_price_above_and_below_on_the_tick() -> None:
    s = FakeSnapshot(ticks={"BTCUSD": tick("BTCUSD", "64001", "64011")})
    above = cond(type="price_above", symbol="btcusd", level="64000")
    r = above.evaluate(s)
    assert (r.truth, r.value, r.threshold) == (Truth.TRUE, "64001", "64000")
    assert cond(type="price_above", symbol="BTCUSD", level="64001").evaluate(s).truth is Truth.FALSE  # strictly
    assert cond(type="price_below", symbol="BTCUSD", level="64010", price="ask").evaluate(s).truth is Truth.FALSE
    assert cond(type="price_below", symbol="BTCUSD", level="64007", price="mid").evaluate(s).truth is Truth.TRUE
    assert above.needs() == [("BTCUSD", None)]


def test_a_stale_or_missing_tick_is_unknown() -> None:
    stale = FakeSnapshot(ticks={"BTCUSD": tick("BTCUSD", "64001", "64011", age_ms=5001)})
    c = cond(type="price_above", symbol="BTCUSD", level="1")
    r = c.evaluate(stale)
    assert r.truth is Truth.UNKNOWN and r.age_ms == 5001
    assert c.evaluate(FakeSnapshot()).truth is Truth.UNKNOWN
    assert cond(type="price_above", symbol="BTCUSD", level="1", max_age_ms=6000).evaluate(stale).truth is Truth.TRUE


@pytest.mark.parametrize(
    ("closes", "direction", "expected"),
    [
        (["99", "101"], "above", Truth.TRUE),
        (["100", "101"], "above", Truth.TRUE),  # from the level counts: it was not above
        (["101", "102"], "above", Truth.FALSE),  # already above: no cross
        (["99", "100"], "above", Truth.FALSE),  # reaching the level is not crossing it
        (["101", "99"], "below", Truth.TRUE),
        (["99", "98"], "below", Truth.FALSE),
        (["99"], "above", Truth.UNKNOWN),  # one bar: not enough
    ],
)
def test_crosses_reads_the_last_two_closed_bars(closes: list[str], direction: str, expected: Truth) -> None:
    c = cond(type="crosses", symbol="EURUSD", timeframe="m5", level="100", direction=direction)
    assert c.evaluate(snap("EURUSD", M5, closes)).truth is expected


def test_holds_above_for_n_bars() -> None:
    c = cond(type="holds_above", symbol="BTCUSD", timeframe="M15", level="64000", bars=4)
    assert c.evaluate(snap("BTCUSD", M15, ["63000", "64100", "64200", "64050", "64300"])).truth is Truth.TRUE
    r = c.evaluate(snap("BTCUSD", M15, ["64100", "64200", "63999", "64300", "64400"]))
    assert r.truth is Truth.FALSE and "2 of the last 4" in r.detail
    assert c.evaluate(snap("BTCUSD", M15, ["64100", "64200", "64300"])).truth is Truth.UNKNOWN
    below = cond(type="holds_below", symbol="BTCUSD", timeframe="M15", level="64000", bars=2)
    assert below.evaluate(snap("BTCUSD", M15, ["64100", "63900", "63800"])).truth is Truth.TRUE
    # stale bars: unknown whatever they say
    assert c.evaluate(snap("BTCUSD", M15, ["64100"] * 5, age_ms=60_001)).truth is Truth.UNKNOWN


def test_change_pct_dxy_falls_0_3_pct_in_1h() -> None:
    # 61 M1 closes: the first is the reference an hour before the last
    closes = ["104.00"] + ["103.90"] * 59 + ["103.68"]
    c = cond(type="change_pct", symbol="DXY", window="1h", below="-0.3")
    r = c.evaluate(snap("DXY", M1, closes))
    assert (r.truth, r.value) == (Truth.TRUE, "-0.3077")
    closes[-1] = "103.70"  # -0.2885 %
    assert c.evaluate(snap("DXY", M1, closes)).truth is Truth.FALSE
    rise = cond(type="change_pct", symbol="DXY", window="15m", timeframe="M5", above="0.5")
    assert rise.evaluate(snap("DXY", M5, ["100", "100", "100", "100.5"])).truth is Truth.TRUE
    assert rise.evaluate(snap("DXY", M5, ["100", "100.5"])).truth is Truth.UNKNOWN  # less than the window


def test_correlation_of_returns() -> None:
    a = ["100", "101", "100", "102", "101", "103"]
    together = FakeSnapshot(
        series={
            ("EURUSD", M5): make_bars("EURUSD", M5, a),
            ("GBPUSD", M5): make_bars("GBPUSD", M5, ["200", "202", "200", "204", "202", "206"]),
            ("DXY", M5): make_bars("DXY", M5, ["100", "99", "100", "98", "99", "97"]),
        }
    )
    pos = cond(type="correlation", symbol="EURUSD", other="GBPUSD", timeframe="M5", bars=5, above="0.9")
    r = pos.evaluate(together)
    assert (r.truth, r.value) == (Truth.TRUE, "1")
    neg = cond(type="correlation", symbol="EURUSD", other="DXY", timeframe="M5", bars=5, below="-0.9")
    assert neg.evaluate(together).value == "-1" and neg.evaluate(together).truth is Truth.TRUE
    longer = cond(type="correlation", symbol="EURUSD", other="DXY", timeframe="M5", bars=10, below="-0.9")
    assert longer.evaluate(together).truth is Truth.UNKNOWN


@pytest.mark.parametrize(
    ("obj", "bad"),
    [
        ({"type": "price_above", "symbol": "X"}, ["c.level: required"]),
        ({"type": "price_above", "symbol": "X", "level": "1", "lvl": 2}, ["c.lvl: unknown parameter"]),
        ({"type": "crosses", "symbol": "X", "timeframe": "M5", "level": "1", "direction": "up"}, ["c.direction"]),
        ({"type": "holds_above", "symbol": "X", "timeframe": "M5", "level": "-1", "bars": 0}, ["c.level", "c.bars"]),
        ({"type": "change_pct", "symbol": "X", "window": "7m", "timeframe": "M5", "below": "1"}, ["c.window"]),
        ({"type": "change_pct", "symbol": "X", "window": "1h", "below": "1", "above": "2"}, ["c.below/above"]),
        ({"type": "correlation", "symbol": "X", "other": "X", "timeframe": "M5", "bars": 5, "above": 2}, ["c.other"]),
        ({"type": "teleport"}, ["c.type: unknown condition type"]),
    ],
)
def test_bad_parameters_are_named(obj: dict[str, object], bad: list[str]) -> None:
    with pytest.raises(ConditionError) as err:
        parse_condition(obj, "c")
    for needle in bad:
        assert any(e.startswith(needle) for e in err.value.errors), err.value.errors


def test_to_json_round_trips() -> None:
    for obj in (
        {"type": "price_below", "symbol": "X", "level": "1.10"},
        {"type": "crosses", "symbol": "X", "timeframe": "H1", "level": "2", "direction": "below"},
        {"type": "holds_below", "symbol": "X", "timeframe": "M5", "level": "2", "bars": 3, "max_age_ms": 1},
        {"type": "change_pct", "symbol": "DXY", "window": "2h", "timeframe": "M15", "above": "0.2"},
        {"type": "correlation", "symbol": "A", "other": "B", "timeframe": "M5", "bars": 20, "below": "-0.5"},
    ):
        c = parse_condition(obj, "c")
        assert parse_condition(c.to_json(), "c") == c


CAUSAL = [
    {"type": "crosses", "symbol": "S", "timeframe": "M5", "level": "100", "direction": "above"},
    {"type": "holds_above", "symbol": "S", "timeframe": "M5", "level": "100", "bars": 3},
    {"type": "holds_below", "symbol": "S", "timeframe": "M5", "level": "101", "bars": 2},
    {"type": "change_pct", "symbol": "S", "timeframe": "M5", "window": "15m", "above": "0.5"},
    {"type": "correlation", "symbol": "S", "other": "O", "timeframe": "M5", "bars": 4, "above": "0.5"},
]


@pytest.mark.parametrize("obj", CAUSAL, ids=[str(c["type"]) for c in CAUSAL])
def test_causality_replay(obj: dict[str, object]) -> None:
    """Readings made as each bar closes equal the readings re-made afterwards on the same
    prefixes of the full history: a settled reading is never rewritten by later bars."""
    s = ["99", "100.5", "101", "100.2", "99.8", "101.5", "102", "102.5", "99", "103"]
    o = ["50", "50.3", "50.6", "50.2", "50.1", "50.9", "51", "51.4", "49.8", "51.6"]
    full = {"S": make_bars("S", M5, s), "O": make_bars("O", M5, o)}
    c = parse_condition(obj, "c")
    live = []
    for k in range(1, len(s) + 1):
        snapshot = FakeSnapshot(series={(n, M5): make_bars(n, M5, (s if n == "S" else o)[:k]) for n in ("S", "O")})
        live.append(c.evaluate(snapshot))
    for k in range(1, len(s) + 1):
        later = FakeSnapshot(series={(n, M5): b.slice(0, k, forming=False) for n, b in full.items()})
        assert c.evaluate(later) == live[k - 1], k
    assert {r.truth for r in live} >= {Truth.UNKNOWN} and len({r.truth for r in live}) >= 2
