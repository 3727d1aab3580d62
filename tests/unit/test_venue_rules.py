"""The broker rules (stops and freeze levels, volume, trade mode, market hours) and their
settings, each refusal one line naming its rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from common.errors import ConfigError
from engine.market.base import Timeframe, TradeMode
from engine.model import Side
from engine.venue.hours import minute_of_week, parse_hours
from engine.venue.model import Kind
from engine.venue.rules import MARKET, check_cancel, check_close, check_modify, check_open
from engine.venue.settings import venue_settings
from tests.unit.venue_fixtures import buy, contract, pending, q, sell

D = Decimal
EURUSD = contract("EURUSD")  # stops level 10 points = 0.00010
GOLD = contract("XAUUSD")  # stops level 50 points = 0.50, freeze level 10 points = 0.10
QUOTE = q(1, "1.10000", "1.10010")


def rule(refusal: object) -> str | None:
    return None if refusal is None else refusal.rule  # type: ignore[attr-defined]


def test_a_stop_nearer_than_the_stops_level_is_refused() -> None:
    def market_buy(sl: str, tp: str | None = None) -> object:
        return check_open(EURUSD, QUOTE, Side.BUY, MARKET, D("1"), None, D(sl), D(tp) if tp else None, open_market=True)

    # a buy's stop is measured from the bid (1.10000): 1.09995 is 5 points away, 1.09990 ten
    refused = market_buy("1.09995")
    assert rule(refused) == "stops_level"
    assert str(refused) == (
        "stops_level: stop loss 1.09995 must be below the bid 1.10000 by at least 10 points (0.00010)"
    )
    assert market_buy("1.09990") is None
    assert rule(market_buy("1.10005")) == "stops_level"  # above the bid: the wrong side
    assert rule(market_buy("1.09000", tp="1.10005")) == "stops_level"
    assert market_buy("1.09000", tp="1.10010") is None
    # a sell's from the ask (1.10010)
    sell_sl = check_open(EURUSD, QUOTE, Side.SELL, MARKET, D("1"), None, D("1.10015"), None, open_market=True)
    assert rule(sell_sl) == "stops_level"
    assert check_open(EURUSD, QUOTE, Side.SELL, MARKET, D("1"), None, D("1.10020"), None, open_market=True) is None


def test_pending_orders_sit_on_their_side_of_the_market_beyond_the_stops_level() -> None:
    def order(side: Side, kind: Kind, price: str, sl: str | None = None) -> object:
        return check_open(EURUSD, QUOTE, side, kind, D("1"), D(price), D(sl) if sl else None, None, open_market=True)

    assert order(Side.BUY, Kind.LIMIT, "1.10000") is None  # ask 1.10010 - 10 points
    assert rule(order(Side.BUY, Kind.LIMIT, "1.10001")) == "invalid_price"
    assert rule(order(Side.BUY, Kind.STOP, "1.10015")) == "invalid_price"
    assert order(Side.BUY, Kind.STOP, "1.10020") is None
    assert order(Side.SELL, Kind.LIMIT, "1.10010") is None  # bid 1.10000 + 10 points
    assert rule(order(Side.SELL, Kind.STOP, "1.09995")) == "invalid_price"
    # a pending order's stops are measured from its own price
    assert rule(order(Side.BUY, Kind.LIMIT, "1.09900", sl="1.09895")) == "stops_level"
    assert order(Side.BUY, Kind.LIMIT, "1.09900", sl="1.09890") is None


def test_volume_limits_and_step() -> None:
    def vol(v: str) -> str | None:
        return rule(check_open(EURUSD, QUOTE, Side.BUY, MARKET, D(v), None, None, None, open_market=True))

    assert vol("0.01") is None and vol("100") is None and vol("0.37") is None
    assert vol("0.001") == "volume" and vol("0") == "volume" and vol("100.01") == "volume"
    assert vol("0.015") == "volume"  # not a whole number of 0.01 steps


def test_a_close_only_symbol_closes_and_opens_nothing() -> None:
    close_only = contract("EURUSD", TradeMode.CLOSE_ONLY)
    refused = check_open(close_only, QUOTE, Side.BUY, MARKET, D("1"), None, None, None, open_market=True)
    assert str(refused) == "trade_mode: EURUSD is close-only: positions may be closed, not opened"
    assert rule(check_open(close_only, QUOTE, Side.SELL, Kind.LIMIT, D("1"), D("1.2"), None, None, open_market=True))
    assert check_close(close_only, open_market=True) is None
    assert check_modify(close_only, QUOTE, buy(1, "1.1", sl="1.09"), D("1.0995"), None, open_market=True) is None
    long_only = contract("EURUSD", TradeMode.LONG_ONLY)
    assert rule(check_open(long_only, QUOTE, Side.SELL, MARKET, D("1"), None, None, None, open_market=True))
    assert check_open(long_only, QUOTE, Side.BUY, MARKET, D("1"), None, None, None, open_market=True) is None
    disabled = contract("EURUSD", TradeMode.DISABLED)
    assert str(check_close(disabled, open_market=True)) == "trade_mode: trading EURUSD is disabled"


def test_a_closed_market_rejects_everything() -> None:
    closed = {"open_market": False}
    assert str(check_open(EURUSD, QUOTE, Side.BUY, MARKET, D("1"), None, None, None, **closed)) == (
        "market_closed: the EURUSD market is closed"
    )
    assert rule(check_close(EURUSD, **closed)) == "market_closed"
    assert rule(check_modify(EURUSD, QUOTE, buy(1, "1.1"), D("1.0"), None, **closed)) == "market_closed"
    order = pending(1, Side.BUY, Kind.LIMIT, "1.0")
    assert rule(check_cancel(EURUSD, QUOTE, order, **closed)) == "market_closed"


def test_the_freeze_level_stops_a_modify_or_cancel_about_to_trigger() -> None:
    quote = q(1, "2350.00", "2350.30", "XAUUSD")
    # a buy whose stop 2349.95 is 0.05 below the bid: within the 0.10 freeze level
    frozen = buy(1, "2355.00", sl="2349.95", symbol="XAUUSD")
    refused = check_modify(GOLD, quote, frozen, D("2340.00"), None, open_market=True)
    assert rule(refused) == "freeze_level" and "within the freeze level (10 points)" in str(refused)
    # 0.10 is still frozen (MT5: the distance must exceed it), 0.60 is not, and the new stop
    # must keep the stops level (0.50) from the bid
    at_freeze = buy(2, "2355", sl="2349.90", symbol="XAUUSD")
    assert rule(check_modify(GOLD, quote, at_freeze, D("2340"), None, open_market=True)) == "freeze_level"
    free = buy(3, "2355.00", sl="2349.40", symbol="XAUUSD")
    assert check_modify(GOLD, quote, free, D("2349.50"), None, open_market=True) is None
    assert rule(check_modify(GOLD, quote, free, D("2349.60"), None, open_market=True)) == "stops_level"
    # a sell's take profit near the ask
    short = sell(4, "2360", tp="2350.25", symbol="XAUUSD")
    assert rule(check_modify(GOLD, quote, short, None, D("2340"), open_market=True)) == "freeze_level"
    # a pending buy limit 0.05 under the ask cannot be cancelled; one 0.50 under can
    near = pending(5, Side.BUY, Kind.LIMIT, "2350.25", symbol="XAUUSD")
    assert rule(check_cancel(GOLD, quote, near, open_market=True)) == "freeze_level"
    far = pending(6, Side.BUY, Kind.LIMIT, "2349.80", symbol="XAUUSD")
    assert check_cancel(GOLD, quote, far, open_market=True) is None


# ---- market hours ----

MONDAY = 1_765_152_000_000  # 2025-12-08 00:00 UTC, a Monday
HOUR = 3_600_000


def test_minute_of_week_counts_from_monday_utc() -> None:
    assert minute_of_week(MONDAY) == 0
    assert minute_of_week(0) == 3 * 1440  # 1970-01-01 was a Thursday
    assert minute_of_week(MONDAY + 6 * 24 * HOUR + 23 * HOUR + 59 * 60_000) == 7 * 1440 - 1


def test_forex_hours_close_the_weekend() -> None:
    hours = parse_hours("*=Sun 22:00-24:00,Mon-Thu 00:00-24:00,Fri 00:00-22:00;BTCUSD=always")
    friday = MONDAY + 4 * 24 * HOUR
    sunday = MONDAY + 6 * 24 * HOUR
    assert hours.is_open("EURUSD", MONDAY) and hours.is_open("EURUSD", friday + 21 * HOUR + 59 * 60_000)
    assert not hours.is_open("EURUSD", friday + 22 * HOUR)
    assert not hours.is_open("EURUSD", sunday + 21 * HOUR)
    assert hours.is_open("EURUSD", sunday + 22 * HOUR)
    assert hours.is_open("BTCUSD", sunday + 12 * HOUR)
    assert parse_hours(None).is_open("EURUSD", sunday)  # the default: always
    assert not parse_hours("US500=never").is_open("US500", MONDAY)
    assert parse_hours("US500=never").is_open("EURUSD", MONDAY)  # neither named nor under *


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("EURUSD", "is not SYMBOL=SESSIONS"),
        ("*=Mon 09:00", "is not `DAY[-DAY] HH:MM-HH:MM`"),
        ("*=Mox 09:00-10:00", "'mox' is not a day"),
        ("*=Fri-Mon 09:00-10:00", "goes backwards"),
        ("*=Mon 22:00-02:00", "ends after it starts"),
        ("*=Mon 09:00-24:30", "24:30 is not a time of day"),
        ("A=always;A=never", "A is given more than once"),
    ],
)
def test_bad_hours_are_one_line_naming_the_setting(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_hours(raw)
    assert str(e.value).startswith("HAEXEC_VENUE_HOURS: ") and says in str(e.value)
    assert "\n" not in str(e.value)


# ---- settings ----


def test_venue_settings_defaults_and_overrides() -> None:
    s = venue_settings({})
    assert (s.leverage, s.stop_out_pct, s.stream_maxlen, s.catchup_ms, s.mark_ms) == (100, 50, 10_000, 60_000, 250)
    assert s.bar_timeframes == (Timeframe.M1,) and s.trade_modes == {}
    s = venue_settings(
        {
            "HAEXEC_VENUE_LEVERAGE": "30",
            "HAEXEC_VENUE_STOP_OUT_PCT": "20.5",
            "HAEXEC_VENUE_TRADE_MODES": "US500=close-only, DXY=disabled",
            "HAEXEC_VENUE_BAR_TIMEFRAMES": "h1,M1",
        }
    )
    assert (s.leverage, s.stop_out_pct) == (30, D("20.5"))
    assert s.trade_mode("US500", TradeMode.FULL) is TradeMode.CLOSE_ONLY
    assert s.trade_mode("DXY", TradeMode.FULL) is TradeMode.DISABLED
    assert s.trade_mode("EURUSD", TradeMode.LONG_ONLY) is TradeMode.LONG_ONLY
    assert s.bar_timeframes == (Timeframe.M1, Timeframe.H1)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"HAEXEC_VENUE_LEVERAGE": "0"}, "HAEXEC_VENUE_LEVERAGE: must be 1..10000 (got 0)"),
        ({"HAEXEC_VENUE_LEVERAGE": "１００"}, "HAEXEC_VENUE_LEVERAGE: must be an integer in ASCII digits"),
        ({"HAEXEC_VENUE_STOP_OUT_PCT": "lots"}, "HAEXEC_VENUE_STOP_OUT_PCT: must be a decimal number"),
        ({"HAEXEC_VENUE_TRADE_MODES": "US500=sometimes"}, "HAEXEC_VENUE_TRADE_MODES: US500: mode must be one of"),
        ({"HAEXEC_VENUE_STREAM_MAXLEN": "5"}, "HAEXEC_VENUE_STREAM_MAXLEN: must be 100..10000000"),
        ({"HAEXEC_VENUE_BAR_TIMEFRAMES": "M2"}, "HAEXEC_VENUE_BAR_TIMEFRAMES: 'M2' is not a timeframe"),
        ({"HAEXEC_VENUE_CATCHUP_MS": "-1"}, "HAEXEC_VENUE_CATCHUP_MS: must be 0..86400000"),
    ],
)
def test_bad_venue_settings_are_one_line_naming_the_variable(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        venue_settings(env)
    assert str(e.value).startswith(says) and "\n" not in str(e.value)
