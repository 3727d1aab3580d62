"""The JSON form of market data between the gateway and a replica (engine/market/wire.py):
exact round trips (points and digits, decimal strings, never a float) and strict decoding
that names the bad field."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from engine.market.base import Bars, MarketSpec, Tick, Ticks, Timeframe, TradeMode
from engine.market.wire import (
    WireError,
    bars_from_json,
    bars_to_json,
    spec_from_json,
    spec_to_json,
    tick_from_json,
    tick_to_json,
    ticks_from_json,
    ticks_to_json,
)

SPEC = MarketSpec(
    symbol="EURUSD",
    digits=5,
    point=Decimal("0.00001"),
    contract_size=Decimal("100000"),
    tick_size=Decimal("0.00001"),
    tick_value=Decimal("1.0"),
    volume_min=Decimal("0.01"),
    volume_max=Decimal("100"),
    volume_step=Decimal("0.01"),
    stops_level=10,
    freeze_level=0,
    trade_mode=TradeMode.CLOSE_ONLY,
    currency_profit="USD",
)
BIG = 2**62 + 12345  # past a float's 53 bits: a float anywhere on the way would change it


def through_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def bars(forming: bool = True) -> Bars:
    cols = [
        np.array(v, dtype=np.int64)
        for v in ([60_000, 120_000], [110001, BIG], [110009, 3], [109990, 2], [110005, 1], [41, 0], [10, 12])
    ]
    return Bars.of_columns("EURUSD", Timeframe.M1, 5, cols, forming=forming, as_of_ms=125_000, age_ms=17)


def test_spec_round_trip_is_exact_and_keeps_the_spelling() -> None:
    obj = through_json(spec_to_json(SPEC))
    assert obj["point"] == "0.00001" and obj["trade_mode"] == 3
    back = spec_from_json(obj)
    assert back == SPEC and str(back.tick_value) == "1.0"


def test_tick_round_trip_with_and_without_last() -> None:
    tick = Tick("XAUUSD", 1_700_000_000_123, Decimal("2400.10"), Decimal("2400.40"), None, 250)
    assert tick_from_json(through_json(tick_to_json(tick))) == tick
    traded = Tick("US500", 5, Decimal("5000.25"), Decimal("5000.50"), Decimal("5000.30"), 0)
    assert tick_from_json(through_json(tick_to_json(traded))) == traded


def test_ticks_and_bars_travel_as_their_integer_columns() -> None:
    ticks = Ticks(
        "EURUSD",
        5,
        np.array([1, BIG], dtype=np.int64),
        np.array([110001, 110002], dtype=np.int64),
        np.array([110011, 110012], dtype=np.int64),
        np.array([-1, 110005], dtype=np.int64),
    )
    back = ticks_from_json(through_json(ticks_to_json(ticks)))
    assert back.symbol == "EURUSD" and back.digits == 5
    for c in ("time_ms", "bid", "ask", "last"):
        assert getattr(back, c).dtype == np.int64 and getattr(back, c).tolist() == getattr(ticks, c).tolist()
    assert back.tick(1).last == Decimal("1.10005") and back.tick(0).last is None

    original = bars()
    obj = through_json(bars_to_json(original))
    assert obj["open"] == [110001, BIG] and obj["timeframe"] == "M1"
    got = bars_from_json(obj)
    assert (got.symbol, got.timeframe, got.digits, got.forming, got.as_of_ms, got.age_ms) == (
        "EURUSD",
        Timeframe.M1,
        5,
        True,
        125_000,
        17,
    )
    assert [c.tolist() for c in got.columns()] == [c.tolist() for c in original.columns()]
    assert got.prices("close") == (Decimal("1.10005"), Decimal("0.00001"))
    assert len(bars_from_json(through_json(bars_to_json(Bars.empty("EURUSD", Timeframe.H4, 5))))) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"point": 0.00001}, "spec.point"),  # a JSON number, not a decimal string
        ({"point": "NaN"}, "spec.point"),
        ({"digits": True}, "spec.digits"),
        ({"digits": 40}, "spec.digits"),
        ({"trade_mode": 9}, "spec.trade_mode"),
        ({"stops_level": -1}, "spec.stops_level"),
        ({"symbol": ""}, "spec.symbol"),
        ({"volume_min": "-1"}, "spec"),  # MarketSpec's own rule, named by the object
    ],
)
def test_a_bad_spec_field_is_named(change: dict[str, Any], field: str) -> None:
    obj = {**spec_to_json(SPEC), **change}
    with pytest.raises(WireError) as e:
        spec_from_json(obj)
    assert e.value.field == field


def test_a_missing_field_is_named() -> None:
    obj = spec_to_json(SPEC)
    del obj["tick_size"]
    with pytest.raises(WireError, match=r"spec\.tick_size: is required"):
        spec_from_json(obj)
    t = tick_to_json(Tick("EURUSD", 1, Decimal("1.1"), Decimal("1.2"), None, 0))
    del t["age_ms"]
    with pytest.raises(WireError, match=r"tick\.age_ms"):
        tick_from_json(t)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"open": [110001.0, 3]}, "bars.open"),  # a float in a points column
        ({"high": [1]}, "bars.high"),  # a row short
        ({"time_ms": [True, 2]}, "bars.time_ms"),
        ({"time_ms": [2**63, 1]}, "bars.time_ms"),
        ({"timeframe": "m1"}, "bars.timeframe"),
        ({"forming": 1}, "bars.forming"),
        ({"as_of_ms": "125000"}, "bars.as_of_ms"),
    ],
)
def test_a_bad_bars_field_is_named(change: dict[str, Any], field: str) -> None:
    obj = {**bars_to_json(bars()), **change}
    with pytest.raises(WireError) as e:
        bars_from_json(obj)
    assert e.value.field == field


def test_ticks_columns_must_agree_and_be_integers() -> None:
    obj = ticks_to_json(Ticks.empty("EURUSD", 5))
    obj["bid"] = [1]
    with pytest.raises(WireError, match=r"ticks\.bid: has 1 rows, time_ms has 0"):
        ticks_from_json(obj)
    with pytest.raises(WireError, match="must be a JSON object"):
        ticks_from_json([1, 2])
