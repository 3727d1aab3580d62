"""The risk spec of a market data spec: what a lot is worth at the venue, as the sim says."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.brokers.base import SymbolSpec
from engine.market.sim import SimSource


@pytest.fixture
def sim() -> SimSource:
    return SimSource(0, clock=lambda: 1_772_625_600_100)  # 2026-03-04 12:00:00.100 UTC


def test_the_risk_spec_of_a_market_spec_prices_a_stop_as_the_venue_does(sim: SimSource) -> None:
    spec = SymbolSpec.from_market(sim.spec("EURUSD"))
    assert spec == SymbolSpec(
        contract_size=Decimal(100_000),
        volume_step=Decimal("0.01"),
        min_volume=Decimal("0.01"),
        max_volume=Decimal(100),
        tick_size=Decimal("0.00001"),
        tick_value=Decimal("1.00000"),
    )
    assert spec.loss_per_lot(Decimal("0.0100")) == Decimal(1000)  # 100 pips of a standard lot: 1000 USD
    # USDJPY: profit in JPY, so a tick is worth 100000 x 0.001 / price in USD (rounded up).
    jpy = sim.spec("USDJPY")
    assert SymbolSpec.from_market(jpy).tick_value == jpy.tick_value and jpy.tick_value < Decimal(1)
    gold = SymbolSpec.from_market(sim.spec("XAUUSD"))
    assert gold.loss_per_lot(Decimal("10.00")) == Decimal(1000)  # 100 oz x 10 USD
