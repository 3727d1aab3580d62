"""Every condition type of the five families: registered, documented in the README,
refusing an unknown parameter by name, and parsing back from its own JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.plans.conditions.base import PARSERS
from engine.plans.conditions.registry import parse_condition
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


def leaves(tree: dict[str, Any]) -> list[dict[str, Any]]:
    if "all" in tree or "any" in tree:
        return [leaf for sub in tree.get("all", tree.get("any")) for leaf in leaves(sub)]
    return leaves(tree["not"]) if "not" in tree else [tree]


def test_the_readme_example_trees_parse() -> None:
    start = README.index("The condition trees of the source requirements' example plans")
    text = README[
        README.index("```json", start) + len("```json") : README.index("```\n", README.index("```json", start) + 7)
    ]
    decoder, trees, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        tree, at = decoder.raw_decode(text, at)
        trees.append(tree)
    assert len(trees) == 6
    for tree in trees:
        for leaf in leaves(tree):
            parse(leaf)


@pytest.mark.parametrize("type_name", ["inside_bars", "price_above"])
def test_a_broker_spelling_of_a_symbol_is_one_as_in_a_signal(type_name: str) -> None:
    # One rule for every symbol (engine.market.base.SYMBOL_RE): GER40+ and XAUUSD.m are names.
    extra = {"level": "18000"} if type_name == "price_above" else {"timeframe": "M5"}
    for written, name in (("xauusd.m", "XAUUSD.M"), ("GER40+", "GER40+")):
        condition = parse_condition({"type": type_name, "symbol": written, **extra}, "conditions")
        assert condition.to_json()["symbol"] == name
