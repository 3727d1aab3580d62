"""HAEXEC_MARKET=gateway: the terminal's market data read through a real gateway process (the
fake MetaTrader5 module inside it, driven over its control socket) by engine.market's
GatewaySource, and the gateway's /v1/market routes decoding their queries strictly."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from engine.market import FeedUnavailable, StaleData, Timeframe, TradeMode, UnknownSymbol
from engine.market.base import BadRequest
from engine.market.gateway import GatewaySource
from haexec.marketdata import open_market
from haexec.settings import load as load_settings
from tests.gateway_support import TOKEN, GatewayProcess, start_gateway
from tests.market_support import market_over
from tests.support import free_port, wait_for

D1 = 16408  # TIMEFRAME_D1: the forming bar is today's, so no test straddles a bar's close
DAY_S = 86_400


def feed(gw: GatewayProcess) -> tuple[int, int]:
    """Five closed daily bars and today's forming one, three ticks; (today's open s, first tick ms)."""
    today = int(time.time()) // DAY_S * DAY_S
    rows = [
        [today - DAY_S * k, 1.1 + k / 1e5, 1.1009, 1.0991, 1.10005 + k / 1e5, 40 + k, 10, 0] for k in range(5, -1, -1)
    ]
    gw.control("add_rates", symbol="EURUSD", timeframe=D1, rows=rows)
    first = int(time.time() * 1000) - 3000
    ticks = [[first + 1000 * k, 1.10001 + k / 1e5, 1.10011 + k / 1e5] for k in range(3)]
    gw.control("add_ticks", symbol="EURUSD", rows=ticks)
    return today, first


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("gwmarket")
    process = start_gateway(work, database_url, f"gwm-{uuid.uuid4().hex[:8]}", HAEXEC_GATEWAY_DEADLINE_MS="300")
    wait_for(lambda: process.health()[0] == 200, 10, "a healthy gateway")
    yield process
    process.control.path.unlink(missing_ok=True)
    process.kill(signal.SIGKILL)


@pytest.fixture(scope="module")
def fed(gw: GatewayProcess) -> tuple[int, int]:
    return feed(gw)


@pytest.fixture
def source(gw: GatewayProcess) -> Iterator[GatewaySource]:
    s = GatewaySource(gw.base, TOKEN, deadline_ms=2000)
    s.connect()
    yield s
    s.close()


def test_reads_through_the_gateway_exactly(source: GatewaySource, fed: tuple[int, int]) -> None:
    today, first = fed
    assert {"EURUSD", "XAUUSD", "GER40"} <= set(source.symbols())
    spec = source.spec("XAUUSD")
    assert (spec.digits, spec.point, spec.contract_size, spec.volume_step) == (
        2,
        Decimal("0.01"),
        Decimal("100.0"),
        Decimal("0.01"),
    )
    assert spec.trade_mode is TradeMode.FULL
    tick = source.tick("EURUSD")
    assert (tick.time_ms, tick.bid, tick.ask, tick.last) == (first + 2000, Decimal("1.10003"), Decimal("1.10013"), None)
    assert 0 <= tick.age_ms < 60_000

    ticks = source.ticks("EURUSD", first, first + 5000, 1)  # after the first, at most one
    assert ticks.time_ms.tolist() == [first + 1000] and ticks.bid.tolist() == [110002]

    closed = source.closed_bars("EURUSD", Timeframe.D1, 3)
    assert closed.time_ms.tolist() == [(today - DAY_S * k) * 1000 for k in (3, 2, 1)] and not closed.forming
    assert closed.prices("open")[-1] == Decimal("1.10001")
    newer = source.closed_bars("EURUSD", Timeframe.D1, 10, after_ms=(today - 2 * DAY_S) * 1000)
    assert newer.time_ms.tolist() == [(today - DAY_S) * 1000]
    forming = source.forming_bar("EURUSD", Timeframe.D1)
    assert forming.forming and forming.time_ms.tolist() == [today * 1000]
    assert abs(source.now_ms() - time.time() * 1000) < 5000


def test_the_market_facade_over_the_gateway(source: GatewaySource, fed: tuple[int, int]) -> None:
    market = market_over(source)
    bars = market.bars("EURUSD", "D1", 2, max_age_ms=60_000)
    assert len(bars) == 3 and bars.forming
    with pytest.raises(StaleData):
        market.tick("EURUSD", max_age_ms=1)


def test_unknown_symbol_and_bad_arguments(source: GatewaySource, gw: GatewayProcess, fed: tuple[int, int]) -> None:
    with pytest.raises(UnknownSymbol, match="NOPE"):
        source.tick("NOPE")
    with pytest.raises(UnknownSymbol):
        source.closed_bars("NOPE", Timeframe.M1, 5)
    limited = GatewaySource(gw.base, TOKEN, symbols=["EURUSD"])
    with pytest.raises(UnknownSymbol, match="has EURUSD"):
        limited.spec("XAUUSD")  # refused here, never asked
    with pytest.raises(BadRequest):
        source.closed_bars("EURUSD", Timeframe.M1, 0)


@pytest.mark.parametrize(
    ("route", "params", "field"),
    [
        ("tick", {}, "symbol"),
        ("tick", {"symbol": "EUR USD"}, "symbol"),
        ("tick", {"symbol": "EURUSD", "max": "1"}, "max"),
        ("bars", {"symbol": "EURUSD", "timeframe": "m1", "count": "5"}, "timeframe"),
        ("bars", {"symbol": "EURUSD", "timeframe": "M1", "count": "0"}, "count"),
        ("bars", {"symbol": "EURUSD", "timeframe": "M1", "count": "1e3"}, "count"),
        ("bars", {"symbol": "EURUSD", "timeframe": "M1", "count": "5", "after_ms": "x"}, "after_ms"),
        ("ticks", {"symbol": "EURUSD", "after_ms": "0", "until_ms": "1"}, "limit"),
        ("ticks", {"symbol": "EURUSD", "after_ms": "0", "until_ms": "1", "limit": "100001"}, "limit"),
        ("symbols", {"symbol": "EURUSD"}, "symbol"),
    ],
)
def test_a_bad_query_is_400_naming_the_parameter(
    gw: GatewayProcess, route: str, params: dict[str, str], field: str
) -> None:
    r = gw.get(f"/v1/market/{route}", **params)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and field in r.json()["detail"]


def test_a_repeated_parameter_is_400_and_the_token_is_required(gw: GatewayProcess) -> None:
    r = gw.client.get("/v1/market/tick?symbol=EURUSD&symbol=XAUUSD")
    assert r.status_code == 400 and r.json()["field"] == "symbol"
    assert httpx.get(gw.base + "/v1/market/tick?symbol=EURUSD").status_code == 401
    assert gw.get("/v1/market/spec", symbol="NOPE").status_code == 404
    with pytest.raises(FeedUnavailable, match="HTTP 401"):
        GatewaySource(gw.base, "not-the-token").tick("EURUSD")


def test_a_terminal_call_past_its_deadline_is_503_then_busy_then_back(
    source: GatewaySource, gw: GatewayProcess, fed: tuple[int, int]
) -> None:
    gw.control("hang", function="copy_rates_from_pos")
    with pytest.raises(FeedUnavailable, match="HTTP 503"):
        source.forming_bar("EURUSD", Timeframe.D1)  # the gateway's 300 ms deadline
    with pytest.raises(FeedUnavailable, match="busy"):
        source.tick("EURUSD")  # nothing queues behind the hung call
    gw.control("release")
    wait_for(lambda: gw.control.state()["returned"], 5, "the hung call to return")
    assert source.tick("EURUSD").bid == Decimal("1.10003")


def test_a_gateway_that_does_not_answer_leaves_the_cache_serving(gw: GatewayProcess, fed: tuple[int, int]) -> None:
    source = GatewaySource(gw.base, TOKEN, deadline_ms=300)
    source.connect()
    market = market_over(source)
    before = market.bars("EURUSD", "D1", 3, max_age_ms=600_000)
    gw.kill(signal.SIGSTOP)  # paused: it takes the connection and never answers
    try:
        with pytest.raises(FeedUnavailable, match="unreachable"):
            source.tick("EURUSD")
        served = market.bars("EURUSD", "D1", 3, max_age_ms=600_000)  # closed bars from the cache
        assert served.time_ms.tolist() == before.time_ms[:3].tolist() and not served.forming
        with pytest.raises(StaleData, match="the source failed"):
            market.bars("EURUSD", "D1", 3, max_age_ms=0)
    finally:
        gw.kill(signal.SIGCONT)
        source.close()
    assert source.tick("EURUSD").bid == Decimal("1.10003")


def test_open_market_with_haexec_market_gateway(gw: GatewayProcess) -> None:
    env = {
        "HAEXEC_BROKER": "paper",
        "HAEXEC_MARKET": "gateway",
        "HAEXEC_GATEWAY_URL": gw.base,
        "HAEXEC_GATEWAY_TOKEN": TOKEN,
        "HAEXEC_MARKET_SYMBOLS": "EURUSD",
    }
    market = open_market(load_settings(env), None)
    try:
        assert market.name == "gateway" and market.symbols() == ["EURUSD"]
        assert market.spec("EURUSD").digits == 5
    finally:
        market.close()
    nobody = {**env, "HAEXEC_GATEWAY_URL": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(FeedUnavailable, match="unreachable"):
        open_market(load_settings(nobody), None)
