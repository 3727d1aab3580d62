"""engine.risk: position sizing and pre-trade risk rules. Worked examples checked by hand,
every rule's rejection by name, and properties over random intents, accounts, specs and limits.
All arithmetic is Decimal; the tests' own expectations are computed exactly (Inexact traps)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow, localcontext

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from engine.brokers.base import Account
from engine.model import OrderType, Side, SignalIntent
from engine.risk import (
    LIMIT_ENV,
    RULES,
    RiskLimits,
    RiskRejected,
    SizedOrder,
    SymbolSpec,
    floor_to_step,
    size_order,
)

D = Decimal
FAST = settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow],
)

FX = SymbolSpec(contract_size=D("100000"))  # EURUSD-like: 1 lot = 100 000 units
DEFAULT = RiskLimits()


@contextmanager
def exact() -> Iterator[None]:
    """The test's own arithmetic: any rounding at all raises, so expectations are exact."""
    with localcontext(Context(prec=200, traps=[Inexact, InvalidOperation, DivisionByZero, Overflow])):
        yield


def intent(
    price: str | Decimal = "1.1000",
    sl: str | Decimal = "1.0950",
    *,
    volume: str | Decimal | None = None,
    risk_pct: str | Decimal | None = None,
    side: Side = Side.BUY,
) -> SignalIntent:
    return SignalIntent(
        source="test",
        symbol="EURUSD",
        side=side,
        type=OrderType.MARKET,
        price=D(price),
        sl=D(sl),
        volume=None if volume is None else D(volume),
        risk_pct=None if risk_pct is None else D(risk_pct),
    )


def account(equity: str = "10000", balance: str | None = None, daily_pnl: str = "0") -> Account:
    return Account(balance=D(balance or equity), equity=D(equity), daily_pnl=D(daily_pnl))


def rejected(
    i: SignalIntent,
    acct: Account | None = None,
    open_positions: int = 0,
    spec: SymbolSpec = FX,
    limits: RiskLimits = DEFAULT,
    market: Decimal | None = None,
    margin_per_lot: Decimal | None = None,
) -> RiskRejected:
    with pytest.raises(RiskRejected) as info:
        size_order(i, acct or account(), open_positions, spec, limits, market, margin_per_lot)
    err = info.value
    assert err.rule in RULES
    assert str(err) == f"{err.rule}: {err.detail}"
    assert "\n" not in err.detail
    return err


def assert_decimals(order: SizedOrder) -> None:
    for value in (order.volume, order.risk_amount, order.risk_pct):
        assert type(value) is Decimal


# ---- worked examples (numbers checked by hand in the comments) ----


def test_example_eurusd_one_percent() -> None:
    # allowed = 10000 x 1 / 100 x 0.95 = 95 USD; stop = 1.1000 - 1.0950 = 0.0050
    # per lot = 0.0050 x 100000 = 500 USD; volume = 95 / 500 = 0.19 (already a 0.01 multiple)
    # risk = 0.19 x 500 = 95 USD = 0.95 % of 10000
    order = size_order(intent(risk_pct="1"), account("10000"), 0, FX, DEFAULT)
    assert order == SizedOrder(volume=D("0.19"), risk_amount=D("95"), risk_pct=D("0.95"))
    assert str(order.volume) == "0.19"
    assert_decimals(order)


def test_example_rounds_down_not_to_nearest() -> None:
    # allowed = 10000 x 2 / 100 x 0.95 = 190; stop = 1.2345 - 1.2300 = 0.0045; per lot = 450
    # 190 / 450 = 0.4222... -> 0.42 (never 0.43); risk = 0.42 x 450 = 189 = 1.89 %
    order = size_order(intent("1.2345", "1.2300", risk_pct="2"), account("10000"), 0, FX, DEFAULT)
    assert order == SizedOrder(volume=D("0.42"), risk_amount=D("189"), risk_pct=D("1.89"))
    # 1.35 %: 10000 x 1.35 / 100 x 0.95 = 128.25; 128.25 / 450 = 0.285 -> 0.28 (half-up would say 0.29)
    order = size_order(intent("1.2345", "1.2300", risk_pct="1.35"), account("10000"), 0, FX, DEFAULT)
    assert order.volume == D("0.28")
    assert order.risk_amount == D("126")  # 0.28 x 450


def test_example_sell_gold_no_margin() -> None:
    # a sell: stop above entry. stop = 2014.50 - 2000.00 = 14.50; contract 100 oz -> 1450 per lot
    # allowed = 5000 x 1.5 / 100 x 1 = 75; 75 / 1450 = 0.05172... -> 0.05; risk 72.5 = 1.45 %
    gold = SymbolSpec(contract_size=D("100"))
    limits = RiskLimits(safety_margin=D("1"))
    sell = intent("2000.00", "2014.50", risk_pct="1.5", side=Side.SELL)
    order = size_order(sell, account("5000"), 0, gold, limits)
    assert order == SizedOrder(volume=D("0.05"), risk_amount=D("72.5"), risk_pct=D("1.45"))


def test_example_coarse_step() -> None:
    # as the first example, 95 / 500 = 0.19, but the venue trades in 0.05 lots -> 0.15
    # risk = 0.15 x 500 = 75 = 0.75 %
    spec = SymbolSpec(contract_size=D("100000"), volume_step=D("0.05"), min_volume=D("0.05"))
    order = size_order(intent(risk_pct="1"), account("10000"), 0, spec, DEFAULT)
    assert order == SizedOrder(volume=D("0.15"), risk_amount=D("75"), risk_pct=D("0.75"))
    assert str(order.volume) == "0.15"


def test_requested_risk_above_the_cap_is_sized_at_the_cap() -> None:
    # 5 % asked, 2 % allowed: 10000 x 2 / 100 x 0.95 = 190; 190 / 500 = 0.38
    order = size_order(intent(risk_pct="5"), account("10000"), 0, FX, DEFAULT)
    assert order.volume == D("0.38")
    assert order.risk_amount == D("190")


def test_risk_sized_volume_is_capped_to_the_largest_step_within_the_maximum() -> None:
    # uncapped: 0.19. The venue allows 0.1 lots -> 0.10
    spec = SymbolSpec(contract_size=D("100000"), max_volume=D("0.1"))
    assert size_order(intent(risk_pct="1"), account(), 0, spec, DEFAULT).volume == D("0.10")
    # our own limit 0.17 with 0.05 steps -> 0.15 (0.17 itself is not tradeable)
    spec = SymbolSpec(contract_size=D("100000"), volume_step=D("0.05"), min_volume=D("0.05"))
    order = size_order(intent(risk_pct="2"), account(), 0, spec, RiskLimits(max_volume=D("0.17")))
    assert order.volume == D("0.15")
    assert order.risk_amount == D("75")


def test_capped_volume_below_the_minimum_is_refused() -> None:
    spec = SymbolSpec(contract_size=D("100000"), volume_step=D("0.1"), min_volume=D("0.1"))
    err = rejected(intent(risk_pct="1"), spec=spec, limits=RiskLimits(max_volume=D("0.05")))
    assert err.rule == "min_volume"
    assert "capped" in err.detail


def test_risk_too_small_for_the_minimum_volume() -> None:
    # 1000 x 1 / 100 x 0.95 = 9.5; 9.5 / 500 = 0.019 -> 0.01 ok; at 0.1 % -> 0.0019 -> 0.00 < 0.01
    assert size_order(intent(risk_pct="1"), account("1000"), 0, FX, DEFAULT).volume == D("0.01")
    err = rejected(intent(risk_pct="0.1"), account("1000"))
    assert err.rule == "min_volume"
    assert "0.00 < min_volume 0.01" in err.detail


# ---- explicit volume: accepted unchanged, or refused ----


def test_explicit_volume_is_kept_exactly() -> None:
    # 0.40 lots x 500 per lot = 200 = exactly 2 % of 10000: at the cap is allowed
    order = size_order(intent(volume="0.40"), account("10000"), 0, FX, DEFAULT)
    assert order == SizedOrder(volume=D("0.40"), risk_amount=D("200"), risk_pct=D("2"))
    assert str(order.volume) == "0.40"
    assert_decimals(order)


def test_explicit_volume_off_step_is_not_rounded() -> None:
    # the step is the venue's business: size_order never changes what the trader asked for
    order = size_order(intent(volume="0.123"), account("10000"), 0, FX, DEFAULT)
    assert str(order.volume) == "0.123"


def test_explicit_volume_risking_too_much_is_refused() -> None:
    # 0.41 x 500 = 205 > 200 = 2 % of 10000
    err = rejected(intent(volume="0.41"))
    assert err.rule == "risk_cap"
    assert "205" in err.detail and "200" in err.detail


def test_explicit_volume_above_the_maximum_is_refused_not_capped() -> None:
    err = rejected(intent(volume="150"), account("100000000"))
    assert err.rule == "max_volume"
    assert "150 > max_volume 100" in err.detail
    venue = SymbolSpec(contract_size=D("100000"), max_volume=D("0.5"))
    assert rejected(intent(volume="0.6"), account("100000000"), spec=venue).rule == "max_volume"
    assert size_order(intent(volume="0.5"), account("100000000"), 0, venue, DEFAULT).volume == D("0.5")


def test_explicit_volume_below_the_minimum_is_refused() -> None:
    assert rejected(intent(volume="0.005")).rule == "min_volume"
    assert rejected(intent(volume="0")).rule == "min_volume"
    assert rejected(intent(volume="-1")).rule == "min_volume"


# ---- each rule, and the order they are checked in ----


@pytest.mark.parametrize("equity", ["0", "-5"])
def test_equity(equity: str) -> None:
    assert rejected(intent(risk_pct="1"), account(equity, balance="10000")).rule == "equity"


def test_daily_loss() -> None:
    # 5 % of balance 10000 = 500: a realised loss of 500 stops new trades, 499.99 does not
    err = rejected(intent(risk_pct="1"), account("9500", balance="10000", daily_pnl="-500"))
    assert err.rule == "max_daily_loss"
    assert "500" in err.detail
    ok = account("9500", balance="10000", daily_pnl="-499.99")
    assert size_order(intent(risk_pct="1"), ok, 0, FX, DEFAULT).volume > 0
    assert size_order(intent(risk_pct="1"), account(daily_pnl="2000"), 0, FX, DEFAULT).volume > 0


def test_open_positions() -> None:
    assert rejected(intent(risk_pct="1"), open_positions=20).rule == "max_open_positions"
    assert size_order(intent(risk_pct="1"), account(), 19, FX, DEFAULT).volume == D("0.19")
    assert rejected(intent(risk_pct="1"), open_positions=1, limits=RiskLimits(max_open_positions=1)).rule == (
        "max_open_positions"
    )


def test_stop_distance() -> None:
    assert rejected(intent("1.1000", "1.1000", risk_pct="1")).rule == "stop_distance"
    assert rejected(intent("1.1000", "1.10000", volume="0.01")).rule == "stop_distance"


# ---- the venue's spec and the executable price ----

EURUSD_TICKS = SymbolSpec(contract_size=D("100000"), tick_size=D("0.00001"), tick_value=D("1"))
GER40_TICKS = SymbolSpec(  # an EUR index in a USD account: 1 EUR per 0.1 point per lot
    contract_size=D("1"), volume_step=D("0.1"), min_volume=D("0.1"), tick_size=D("0.1"), tick_value=D("1.08")
)


def test_tick_value_sizes_a_ten_pip_stop() -> None:
    # 1% of 10000 x 0.95 = 95 / (0.0010 / 0.00001 x 1 = 100 per lot) = 0.95 lots
    order = size_order(intent("1.1000", "1.0990", risk_pct="1"), account(), 0, EURUSD_TICKS, DEFAULT, D("1.1000"))
    assert order.volume == D("0.95")
    assert order.risk_amount == D("95")


def test_tick_value_in_the_account_currency() -> None:
    # 1% of 10000 x 0.95 = 95 / (50 / 0.1 x 1.08 = 540 per lot) = 0.17.. -> 0.1 (step 0.1)
    order = size_order(intent("18000", "17950", risk_pct="1"), account(), 0, GER40_TICKS, DEFAULT, D("18000"))
    assert order.volume == D("0.1")
    assert order.risk_amount == D("54")


def test_sized_and_capped_at_the_executable_price() -> None:
    # the signal's 5-pip stop is 15 pips from the ask: sized for 15, not 5
    order = size_order(intent("1.1000", "1.0995", risk_pct="1"), account(), 0, EURUSD_TICKS, DEFAULT, D("1.1010"))
    assert order.volume == D("0.63")  # 95 / 150 per lot = 0.633..
    # an explicit volume that fits at the signal's price but not at the ask is refused
    at_signal = size_order(intent("1.1000", "1.0995", volume="3"), account(), 0, EURUSD_TICKS, DEFAULT, D("1.1000"))
    assert at_signal.risk_amount == D("150")
    err = rejected(intent("1.1000", "1.0995", volume="3"), spec=EURUSD_TICKS, market=D("1.1010"))
    assert err.rule == "risk_cap"


def test_a_price_far_from_the_market_is_refused() -> None:
    # the case: signal 1.00010, stop 1.00000, market 1.1001: refused, not sized at 951%
    err = rejected(intent("1.00010", "1.00000", risk_pct="1"), spec=EURUSD_TICKS, market=D("1.1001"))
    assert err.rule == "price_tolerance"
    assert "1.1001" in err.detail and "1.00010" in err.detail
    # with the tolerance widened, it is sized for the real 1001-pip stop: too small to trade
    wide = RiskLimits(max_price_deviation_pct=D("20"))
    err = rejected(intent("1.00010", "1.00000", risk_pct="1"), spec=EURUSD_TICKS, limits=wide, market=D("1.1001"))
    assert err.rule == "min_volume"


@pytest.mark.parametrize(("side", "sl"), [(Side.BUY, "1.1010"), (Side.SELL, "1.0990")])
def test_a_stop_on_the_wrong_side_of_the_market_is_refused(side: Side, sl: str) -> None:
    err = rejected(intent("1.1000", sl, risk_pct="1", side=side), spec=EURUSD_TICKS, market=D("1.1000"))
    assert err.rule == "stop_side"


def test_rules_are_checked_in_order() -> None:
    """Fix one breach at a time: each fix reveals the next rule, in the documented order."""
    spec = SymbolSpec(contract_size=D("100000"), max_volume=D("1"))
    no_stop, tiny = intent("1.1", "1.1", volume="0.001"), intent("1.1", "1.0", volume="0.001")
    cases: list[tuple[str, SignalIntent, Account, int]] = [
        ("equity", no_stop, account("0", "100", "-100"), 99),
        ("max_daily_loss", no_stop, account("10", "100", "-100"), 99),
        ("max_open_positions", no_stop, account("10", "100"), 99),
        ("price_tolerance", intent("1.2", "1.1", volume="0.001"), account("10", "100"), 0),
        ("stop_distance", no_stop, account("10", "100"), 0),
        ("stop_side", intent("1.1", "1.2", volume="0.001"), account("10", "100"), 0),
        ("min_volume", tiny, account("10", "100"), 0),
        ("max_volume", intent("1.1", "1.0", volume="2"), account("10", "100"), 0),
        ("risk_cap", intent("1.1", "1.0", volume="1"), account("10", "100"), 0),
        (
            "margin",
            tiny_risk := intent("1.1", "1.0999", volume="0.01"),
            replace(account("10", "100"), free_margin=D(1)),
            0,
        ),
    ]
    assert tiny_risk.volume is not None
    assert [c[0] for c in cases] == list(RULES)
    for rule, i, acct, positions in cases:
        assert rejected(i, acct, positions, spec, market=D("1.1"), margin_per_lot=D("1100")).rule == rule


def test_margin_is_checked_against_free_margin_where_the_venue_states_both() -> None:
    # 0.5 lots x 1100 per lot (100,000 x 1.1 at 1:100) = 550 of 500 free: refused.
    order_ = intent("1.1000", "1.0990", volume="0.5")
    short = replace(account(), free_margin=D("500"))
    err = rejected(order_, short, spec=EURUSD_TICKS, market=D("1.1"), margin_per_lot=D("1100"))
    assert err.rule == "margin" and "550" in err.detail and "500" in err.detail
    enough = replace(account(), free_margin=D("550"))
    sized = size_order(order_, enough, 0, EURUSD_TICKS, DEFAULT, D("1.1"), D("1100"))
    assert sized.margin == D("550")
    # A venue that states no margin (MT5 today), or an account without free margin: no check.
    assert size_order(order_, short, 0, EURUSD_TICKS, DEFAULT, D("1.1")).margin is None
    assert size_order(order_, account(), 0, EURUSD_TICKS, DEFAULT, D("1.1"), D("1100")).margin is None


# ---- inputs: Decimal only ----


def test_floats_are_refused_not_converted() -> None:
    float_equity = Account(balance=D(1000), equity=1000.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="account.equity"):
        size_order(intent(risk_pct="1"), float_equity, 0, FX, DEFAULT)
    float_price = replace(intent(risk_pct="1"), price=1.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="intent.price"):
        size_order(float_price, account(), 0, FX, DEFAULT)
    float_volume = replace(intent(volume="0.1"), volume=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="intent.volume"):
        size_order(float_volume, account(), 0, FX, DEFAULT)
    with pytest.raises(TypeError):
        SymbolSpec(contract_size=100000.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        RiskLimits(safety_margin=0.9)  # type: ignore[arg-type]
    assert info.value.setting == "safety_margin"


def test_non_finite_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="account.equity"):
        size_order(intent(risk_pct="1"), Account(balance=D(1), equity=D("NaN")), 0, FX, DEFAULT)


def test_intent_must_carry_exactly_one_of_volume_and_risk_pct() -> None:
    with pytest.raises(ValueError):
        size_order(intent(), account(), 0, FX, DEFAULT)
    with pytest.raises(ValueError):
        size_order(intent(volume="0.1", risk_pct="1"), account(), 0, FX, DEFAULT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"contract_size": D(0)},
        {"volume_step": D(0)},
        {"volume_step": D("-0.01")},
        {"min_volume": D(0)},
        {"max_volume": D(0)},
        {"min_volume": D("1"), "max_volume": D("0.5")},
        {"volume_step": D("Infinity")},
    ],
)
def test_symbol_spec_rejects_nonsense(kwargs: dict[str, Decimal]) -> None:
    with pytest.raises(ValueError):
        SymbolSpec(**kwargs)


def test_floor_to_step() -> None:
    assert str(floor_to_step(D("0.199999"), D("0.01"))) == "0.19"
    assert str(floor_to_step(D("0.2"), D("0.01"))) == "0.20"
    assert str(floor_to_step(D("0.19"), D("0.05"))) == "0.15"
    assert str(floor_to_step(D("7.9"), D("1"))) == "7"
    assert str(floor_to_step(D("0.009"), D("0.01"))) == "0.00"
    assert floor_to_step(D("1E+3"), D("0.01")) == D("1000")


# ---- RiskLimits.from_env ----


def test_from_env_defaults() -> None:
    assert RiskLimits.from_env({}) == RiskLimits()
    assert RiskLimits.from_env({name: "" for name in LIMIT_ENV.values()}) == RiskLimits()
    limits = RiskLimits()
    assert (limits.safety_margin, limits.max_risk_pct, limits.max_volume) == (D("0.95"), D("2"), D("100"))
    assert (limits.max_open_positions, limits.max_daily_loss_pct) == (20, D("5"))


def test_from_env_overrides() -> None:
    limits = RiskLimits.from_env(
        {
            "HAEXEC_RISK_SAFETY_MARGIN": "1",
            "HAEXEC_RISK_MAX_RISK_PCT": "0.5",
            "HAEXEC_RISK_MAX_VOLUME": " 2.5 ",
            "HAEXEC_RISK_MAX_OPEN_POSITIONS": "3",
            "HAEXEC_RISK_MAX_DAILY_LOSS_PCT": "100",
            "HAEXEC_UNRELATED": "x",
        }
    )
    assert limits == RiskLimits(
        safety_margin=D("1"),
        max_risk_pct=D("0.5"),
        max_volume=D("2.5"),
        max_open_positions=3,
        max_daily_loss_pct=D("100"),
    )
    for value in (limits.safety_margin, limits.max_risk_pct, limits.max_volume, limits.max_daily_loss_pct):
        assert type(value) is Decimal
    assert RiskLimits.from_env({"HAEXEC_RISK_MAX_RISK_PCT": "1"}) == RiskLimits(max_risk_pct=D("1"))


INVALID_ENV = [
    ("HAEXEC_RISK_SAFETY_MARGIN", "0"),
    ("HAEXEC_RISK_SAFETY_MARGIN", "-0.5"),
    ("HAEXEC_RISK_SAFETY_MARGIN", "1.01"),
    ("HAEXEC_RISK_SAFETY_MARGIN", "abc"),
    ("HAEXEC_RISK_SAFETY_MARGIN", "NaN"),
    ("HAEXEC_RISK_MAX_RISK_PCT", "0"),
    ("HAEXEC_RISK_MAX_RISK_PCT", "100.01"),
    ("HAEXEC_RISK_MAX_RISK_PCT", "Infinity"),
    ("HAEXEC_RISK_MAX_RISK_PCT", "2%"),
    ("HAEXEC_RISK_MAX_VOLUME", "0"),
    ("HAEXEC_RISK_MAX_VOLUME", "-1"),
    ("HAEXEC_RISK_MAX_VOLUME", "lots"),
    ("HAEXEC_RISK_MAX_OPEN_POSITIONS", "0"),
    ("HAEXEC_RISK_MAX_OPEN_POSITIONS", "-3"),
    ("HAEXEC_RISK_MAX_OPEN_POSITIONS", "1.5"),
    ("HAEXEC_RISK_MAX_OPEN_POSITIONS", "many"),
    ("HAEXEC_RISK_MAX_DAILY_LOSS_PCT", "0"),
    ("HAEXEC_RISK_MAX_DAILY_LOSS_PCT", "101"),
    ("HAEXEC_RISK_MAX_DAILY_LOSS_PCT", "sNaN"),
    ("HAEXEC_RISK_MAX_PRICE_DEVIATION_PCT", "0"),
    ("HAEXEC_RISK_MAX_PRICE_DEVIATION_PCT", "101"),
]


@pytest.mark.parametrize(("name", "value"), INVALID_ENV)
def test_from_env_invalid_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        RiskLimits.from_env({name: value})
    assert info.value.setting == name
    assert str(info.value).startswith(f"{name}: ")
    assert "\n" not in str(info.value)


def test_every_variable_has_an_invalid_case() -> None:
    assert {name for name, _ in INVALID_ENV} == set(LIMIT_ENV.values())


# ---- properties ----


def money(lo: str, hi: str, places: int = 2) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=D(lo), max_value=D(hi), places=places, allow_nan=False, allow_infinity=False)


def mostly(draw: st.DrawFn, usual: st.SearchStrategy[Decimal], rare: st.SearchStrategy[Decimal]) -> Decimal:
    """One draw in ten from `rare` (edges, rejections), the rest from `usual`."""
    return draw(rare) if draw(st.integers(0, 9)) == 0 else draw(usual)


STEPS = [D("0.01"), D("0.1"), D("1"), D("0.05"), D("0.001"), D("0.25")]
CONTRACTS = [D("1"), D("10"), D("100"), D("1000"), D("100000")]


@st.composite
def specs(draw: st.DrawFn) -> SymbolSpec:
    step = draw(st.sampled_from(STEPS))
    min_volume = step * draw(st.integers(1, 10))
    max_volume = draw(st.none() | money("0", "500", 2).map(lambda extra: min_volume + extra))
    contract = mostly(draw, st.sampled_from(CONTRACTS), money("0.01", "1000"))
    return SymbolSpec(contract_size=contract, volume_step=step, min_volume=min_volume, max_volume=max_volume)


@st.composite
def limits_(draw: st.DrawFn) -> RiskLimits:
    return RiskLimits(
        safety_margin=mostly(draw, money("0.5", "1"), money("0.01", "1")),
        max_risk_pct=mostly(draw, money("0.5", "5"), money("0.01", "100")),
        max_volume=mostly(draw, money("1", "1000"), money("0.01", "1")),
        max_open_positions=draw(st.integers(11, 50) if draw(st.integers(0, 9)) else st.integers(1, 10)),
        max_daily_loss_pct=mostly(draw, money("2", "20", 1), money("0.1", "100", 1)),
    )


@st.composite
def accounts(draw: st.DrawFn) -> Account:
    balance = mostly(draw, money("1000", "10000000"), money("-100", "1000"))
    equity = mostly(draw, money("1000", "10000000") | st.just(balance), money("-100", "1000"))
    daily_pnl = mostly(draw, money("-50", "5000"), money("-100000", "0"))
    return Account(balance=balance, equity=equity, daily_pnl=daily_pnl)


@st.composite
def positions(draw: st.DrawFn) -> int:
    return draw(st.integers(0, 10) if draw(st.integers(0, 9)) else st.integers(0, 60))


@st.composite
def intents(draw: st.DrawFn, sizing: str | None = None) -> SignalIntent:
    price = draw(money("0.5", "5000", 5))
    distance = mostly(draw, money("0.00001", "1", 5) | money("1", "50", 2), st.just(D(0)) | money("0", "200", 2))
    side = draw(st.sampled_from(Side))
    sl = price - distance if side is Side.BUY else price + distance
    sizing = sizing or draw(st.sampled_from(["volume", "risk_pct"]))
    if sizing == "volume":
        amount = mostly(draw, money("0.01", "5", 2), money("0", "500", 3))
    else:
        amount = mostly(draw, money("0.1", "5", 2), money("0", "150", 3))
    return SignalIntent(
        source="prop",
        symbol="SYM",
        side=side,
        type=OrderType.MARKET,
        price=price,
        sl=sl,
        **{sizing: amount},  # type: ignore[arg-type]
    )


@FAST
@given(intents(), accounts(), positions(), specs(), limits_())
def test_no_accepted_order_risks_more_than_the_cap(
    i: SignalIntent, acct: Account, positions: int, spec: SymbolSpec, limits: RiskLimits
) -> None:
    try:
        order = size_order(i, acct, positions, spec, limits)
    except RiskRejected as err:
        assert err.rule in RULES
        return
    assert_decimals(order)
    with exact():
        stop = abs(i.price - i.sl)
        assert order.risk_amount == order.volume * stop * spec.contract_size
        assert order.risk_amount <= acct.equity * limits.max_risk_pct / 100
        assert acct.equity > 0
        assert -acct.daily_pnl < acct.balance * limits.max_daily_loss_pct / 100
    assert positions < limits.max_open_positions
    assert spec.min_volume <= order.volume <= limits.max_volume
    assert spec.max_volume is None or order.volume <= spec.max_volume
    if i.volume is not None:
        assert order.volume == i.volume and str(order.volume) == str(i.volume)


@FAST
@given(intents(sizing="risk_pct"), positions(), specs(), limits_(), money("1", "10000000"))
def test_risk_sized_volume_is_rounded_down_to_a_step(
    i: SignalIntent, positions: int, spec: SymbolSpec, limits: RiskLimits, equity: Decimal
) -> None:
    acct = Account(balance=equity, equity=equity)
    try:
        order = size_order(i, acct, positions, spec, limits)
    except RiskRejected as err:
        assert err.rule != "risk_cap"  # sizing from risk can never overshoot the cap
        return
    assert_decimals(order)
    assert i.risk_pct is not None
    with exact():
        stop = abs(i.price - i.sl)
        per_lot = stop * spec.contract_size
        allowed = acct.equity * min(i.risk_pct, limits.max_risk_pct) / 100 * limits.safety_margin
        assert order.volume % spec.volume_step == 0
        assert order.volume * per_lot <= allowed  # never above the unrounded volume allowed / per_lot
        ceiling = min(limits.max_volume, spec.max_volume or limits.max_volume)
        # the largest such multiple, unless the maximum volume was what held it back
        next_step = order.volume + spec.volume_step
        assert next_step * per_lot > allowed or next_step > ceiling
        if limits.safety_margin < 1:
            assert order.risk_amount < acct.equity * limits.max_risk_pct / 100


@FAST
@given(money("0", "100000", 6), st.sampled_from([D("0.01"), D("0.05"), D("0.1"), D("1"), D("0.25")]))
def test_floor_to_step_property(value: Decimal, step: Decimal) -> None:
    floored = floor_to_step(value, step)
    with exact():
        assert floored % step == 0
        assert floored <= value < floored + step
