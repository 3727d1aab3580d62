"""Marking to market, realised P&L and margin, to the cent, computed by hand."""

from __future__ import annotations

from decimal import Decimal

from engine.model import Side
from engine.venue.matching import close_match
from engine.venue.pnl import mark
from tests.unit.venue_fixtures import buy, contract, q, sell

D = Decimal
CONTRACTS = {s: contract(s) for s in ("EURUSD", "USDJPY", "XAUUSD")}


def test_equity_is_balance_plus_floating_to_the_cent() -> None:
    positions = [
        buy(1, "1.08512", volume="0.37"),  # EURUSD
        sell(2, "150.125", volume="1.25", symbol="USDJPY"),
        buy(3, "2350.10", volume="0.03", symbol="XAUUSD"),
    ]
    quotes = {
        "EURUSD": q(1, "1.08631", "1.08640"),
        "USDJPY": q(1, "149.870", "149.881", "USDJPY"),
        "XAUUSD": q(1, "2348.55", "2348.80", "XAUUSD"),
    }
    m = mark(D("100000"), positions, quotes, CONTRACTS, leverage=100)
    # EURUSD: (1.08631 - 1.08512) x 0.37 x 100,000 = 44.03
    # USDJPY: a sell closes at the ask: (150.125 - 149.881) x 1.25 x 100,000 = 30,500 JPY,
    #         / 149.881 = 203.4947... USD -> 203.49
    # XAUUSD: (2348.55 - 2350.10) x 0.03 x 100 = -4.65
    assert m.floating == D("44.03") + D("203.49") + D("-4.65") == D("242.87")
    assert m.equity == D("100242.87")
    # margin at leverage 100, at the open price:
    # EURUSD 0.37 x 100,000 x 1.08512 / 100 = 401.4944 -> 401.49
    # USDJPY 1.25 x 100,000 USD / 100 = 1,250.00 (the base is the account currency)
    # XAUUSD 0.03 x 100 x 2350.10 / 100 = 70.503 -> 70.50
    assert m.margin == D("401.49") + D("1250.00") + D("70.50") == D("1721.99")
    assert m.free_margin == D("98520.88")
    assert m.margin_level == D("5821.34")  # 100,242.87 / 1,721.99 x 100 = 5821.3387...
    assert (m.positions, m.unmarked) == (3, 0)


def test_closing_at_the_mark_realises_exactly_the_floating_pnl() -> None:
    positions = [buy(1, "1.08512", volume="0.37"), sell(2, "150.125", volume="1.25", symbol="USDJPY")]
    quotes = {"EURUSD": q(1, "1.08631", "1.08640"), "USDJPY": q(1, "149.870", "149.881", "USDJPY")}
    m = mark(D("100000"), positions, quotes, CONTRACTS, leverage=30)
    closes = [close_match(p, quotes[p.symbol], CONTRACTS[p.symbol]) for p in positions]
    assert [c.price for c in closes] == [D("1.08631"), D("149.881")]  # the bid for the buy, the ask for the sell
    assert D("100000") + sum(c.pnl for c in closes) == m.equity == D("100247.52")


def test_realised_pnl_rounds_half_away_from_zero_per_deal() -> None:
    eur = CONTRACTS["EURUSD"]
    # 0.005 of a cent either way
    assert eur.profit(Side.BUY, D("0.01"), D("1.00000"), D("1.00005")) == D("0.05")
    assert eur.profit(Side.BUY, D("0.05"), D("1.00000"), D("1.00001")) == D("0.05")  # 0.05 exactly
    jpy = CONTRACTS["USDJPY"]
    # 0.001 x 0.01 x 100,000 = 1 JPY / 160.000 = 0.00625 USD -> 0.01; the loss likewise -0.01
    assert jpy.profit(Side.BUY, D("0.01"), D("160.000"), D("160.001")) == D("0.01")
    assert jpy.profit(Side.SELL, D("0.01"), D("160.000"), D("160.001")) == D("-0.01")


def test_an_unquoted_position_holds_margin_and_counts_as_unmarked() -> None:
    m = mark(D("1000"), [buy(1, "1.10000", volume="0.1")], {}, CONTRACTS, leverage=50)
    assert (m.floating, m.equity, m.margin, m.unmarked) == (0, D("1000"), D("220.00"), 1)
    assert mark(D("5"), [], {}, CONTRACTS, 100).margin_level is None
