"""engine.positions.failsafe.check: widening refused either side, a stop that is not a
price refused, the loss at the stop against the cap (priced as the venue prices it)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.brokers.base import SymbolSpec
from engine.model import Side
from engine.positions.failsafe import check

D = Decimal
FX = SymbolSpec(contract_size=D("100000"))  # 1 lot: 100 000 units, 1 pip of 0.0001 = 10
TICKS = SymbolSpec(tick_size=D("0.00001"), tick_value=D("1"))  # the same, the MT5 way


def test_tightening_within_the_cap_is_allowed() -> None:
    verdict = check(Side.BUY, D("1.1000"), D("1"), D("1.0950"), D("1.0960"), FX, D("500"))
    assert verdict.allowed and verdict.reason == ""
    assert check(Side.SELL, D("1.1000"), D("1"), D("1.1050"), D("1.1040"), FX, D("500")).allowed
    assert check(Side.BUY, D("1.1000"), D("1"), D("1.0960"), D("1.0960"), FX, D("500")).allowed  # unchanged


def test_widening_is_refused_with_one_line() -> None:
    buy = check(Side.BUY, D("1.1000"), D("1"), D("1.0960"), D("1.0950"), FX, D("10000"))
    assert not buy.allowed and buy.reason == "would widen: 1.0950 below 1.0960 for a buy"
    sell = check(Side.SELL, D("1.1000"), D("1"), D("1.1040"), D("1.1050"), FX, D("10000"))
    assert not sell.allowed and sell.reason == "would widen: 1.1050 above 1.1040 for a sell"


@pytest.mark.parametrize("stop", [D("NaN"), D("Infinity"), D("0"), D("-1.1")])
def test_a_stop_that_is_not_a_price_is_refused(stop: Decimal) -> None:
    verdict = check(Side.BUY, D("1.1000"), D("1"), None, stop, FX, D("10000"))
    assert not verdict.allowed and verdict.reason.startswith("not a stop:")


def test_no_stop_yet_means_any_stop_tightens() -> None:
    for none in (None, D("0"), D("NaN")):  # MT5 reports a missing stop as 0
        assert check(Side.SELL, D("1.1000"), D("1"), none, D("1.1050"), FX, D("500")).allowed
        assert check(Side.BUY, D("1.1000"), D("1"), none, D("1.0950"), FX, D("500")).allowed


@pytest.mark.parametrize("spec", [FX, TICKS])
def test_the_loss_at_the_stop_against_the_cap(spec: SymbolSpec) -> None:
    # 50 pips x 10 per pip x 2 lots = 1000.
    assert check(Side.BUY, D("1.1000"), D("2"), None, D("1.0950"), spec, D("1000")).allowed
    over = check(Side.BUY, D("1.1000"), D("2"), None, D("1.0950"), spec, D("999.99"))
    assert not over.allowed
    assert over.reason.startswith("loss at the stop 1.0950 would be 1000")
    assert over.reason.endswith("above the cap 999.99")
    assert not check(Side.SELL, D("1.1000"), D("2"), None, D("1.1050"), spec, D("999.99")).allowed


def test_a_stop_at_or_beyond_entry_loses_nothing() -> None:
    assert check(Side.BUY, D("1.1000"), D("100"), D("1.0900"), D("1.1000"), FX, D("0")).allowed
    assert check(Side.SELL, D("1.1000"), D("100"), D("1.1100"), D("1.0990"), FX, D("0")).allowed
