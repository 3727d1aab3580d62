"""Every condition type of the five families: registered, documented in the README,
refusing an unknown parameter by name, and parsing back from its own JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.plans.conditions.base import PARSERS
from tests.conditions_support import parse, refused

BARS = {"symbol": "EURUSD", "timeframe": "M5"}
MINIMAL: dict[str, dict[str, Any]] = {
    "inside_bars": BARS,
    "fractal_expansion": BARS,
    "atr_ratio": {**BARS, "above": "1.5"},
    "bollinger_squeeze": {**BARS, "width_below": "0.5"},
    "swing_structure": {**BARS, "trend": "up"},
    "break_of_structure": {**BARS, "direction": "up"},
    "change_of_character": {**BARS, "direction": "down"},
    "order_block": {**BARS, "direction": "up"},
    "fair_value_gap": {**BARS, "direction": "down"},
    "breaker_block": {**BARS, "direction": "up"},
    "breaker_retest": {**BARS, "direction": "down"},
    "liquidity_sweep": {**BARS, "side": "low"},
    "mitigation_cascade": {**BARS, "direction": "up"},
    "book_imbalance": {"symbol": "BTCUSD", "below": "-0.2"},
    "tick_volume_imbalance": {**BARS, "above": "0.3"},
    "spoof_suspected": {"symbol": "BTCUSD"},
    "confluence": {"timeframes": ["M5", "M15"], "condition": {"type": "inside_bars", "symbol": "EURUSD"}},
    "news_filter": {"currencies": ["USD"]},
    "rsi_divergence": {**BARS, "direction": "bullish"},
    "momentum_decay": {**BARS, "direction": "down"},
}
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("type_name", sorted(MINIMAL))
def test_each_type_is_registered_documented_strict_and_round_trips(type_name: str) -> None:
    assert type_name in PARSERS
    assert f"| `{type_name}` |" in README
    obj = {"type": type_name, **MINIMAL[type_name]}
    c = parse(obj)
    assert c.type == type_name
    assert parse(c.to_json()).to_json() == c.to_json()
    assert refused({**obj, "bogus": 1}) == ["conditions.bogus: unknown parameter"]
    assert all(isinstance(v, str | int | list | dict) for v in c.to_json().values())  # JSON, Decimals as text
