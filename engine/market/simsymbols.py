"""The symbols the sim source knows: where each trades, how it moves, what a lot is worth.

Figures are typical of a retail ECN account in USD (spreads in points, annualised
volatility of the mid). `usd_beta` is the loading on the common US dollar factor: a
positive one rises when the dollar strengthens (USDJPY, DXY), a negative one falls
(EURUSD, gold), so DXY against EURUSD correlates at about 0.98 x -0.9 = -0.88.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class SimSymbol:
    name: str
    base: float  # the level the mid reverts to
    digits: int
    annual_vol: float
    usd_beta: float  # -1..1
    spread: int  # typical spread in points at a calm moment
    contract_size: Decimal
    tick_size: Decimal
    volume_min: Decimal = Decimal("0.01")
    volume_max: Decimal = Decimal("100")
    volume_step: Decimal = Decimal("0.01")
    stops_level: int = 0
    freeze_level: int = 0
    has_last: bool = False  # exchange-like symbols report a last trade price
    usd_base: bool = False  # USDxxx: the tick value in USD depends on the price
    currency_profit: str = "USD"


def _fx(name: str, base: float, vol: float, beta: float, spread: int, digits: int = 5, **kw: object) -> SimSymbol:
    return SimSymbol(
        name,
        base,
        digits,
        vol,
        beta,
        spread,
        Decimal(100_000),
        Decimal(1).scaleb(-digits),
        stops_level=10,
        **kw,  # type: ignore[arg-type]
    )


CATALOG: dict[str, SimSymbol] = {
    s.name: s
    for s in (
        _fx("EURUSD", 1.0850, 0.07, -0.90, 8),
        _fx("GBPUSD", 1.2700, 0.08, -0.80, 12),
        _fx("USDJPY", 150.00, 0.09, 0.70, 10, digits=3, usd_base=True, currency_profit="JPY"),
        _fx("USDCHF", 0.8800, 0.08, 0.75, 12, usd_base=True, currency_profit="CHF"),
        _fx("AUDUSD", 0.6600, 0.09, -0.65, 10),
        _fx("USDCAD", 1.3600, 0.06, 0.60, 14, usd_base=True, currency_profit="CAD"),
        SimSymbol(
            "XAUUSD",
            2350.00,
            2,
            0.15,
            -0.40,
            25,
            Decimal(100),
            Decimal("0.01"),
            stops_level=50,
            freeze_level=10,
        ),
        SimSymbol(
            "US500",
            5200.0,
            1,
            0.17,
            -0.10,
            5,
            Decimal(1),
            Decimal("0.1"),
            volume_min=Decimal("0.1"),
            volume_step=Decimal("0.1"),
            volume_max=Decimal("50"),
            stops_level=20,
            has_last=True,
        ),
        SimSymbol(
            "BTCUSD",
            65000.00,
            2,
            0.55,
            -0.15,
            1500,
            Decimal(1),
            Decimal("0.01"),
            volume_max=Decimal("10"),
            stops_level=1000,
            has_last=True,
        ),
        SimSymbol("DXY", 104.000, 3, 0.06, 0.98, 20, Decimal(1000), Decimal("0.001"), volume_max=Decimal("50")),
    )
}

DEFAULT_SYMBOLS: tuple[str, ...] = tuple(CATALOG)
