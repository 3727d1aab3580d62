"""The paper venue with a market (a sim on a fixed clock), on real Redis and PostgreSQL: the
leader's executor sizes with the market's spec and books market orders at the ask (buy) or
the bid (sell) it was quoted, never at the signal's price, inside the claim's fenced batch;
an unknown symbol or a stale price is rejected in one line; a limit order keeps its price."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from engine.brokers.base import OrderRequest, Outcome
from engine.brokers.paper import PaperBroker
from engine.market import Market
from engine.market.metrics import MarketMetrics
from engine.market.sim import SimSource
from engine.model import OrderType, Side
from tests.integration.test_executor import Rig, rig, start_executor, submit  # noqa: F401 (rig is a fixture)
from tests.integration.test_paper import lead
from tests.market_support import MarketClock as Clock
from tests.support import wait_for

T = int(datetime(2026, 3, 4, 14, 0, 7, tzinfo=UTC).timestamp() * 1000) + 120  # 120 ms after a sim tick


@pytest.fixture
def sim() -> SimSource:
    return SimSource(0, clock=Clock(T))


@pytest.fixture
def priced(rig: Rig, sim: SimSource) -> Iterator[PaperBroker]:  # noqa: F811
    broker = PaperBroker(
        rig.pool, rig.cluster, "leader", market=Market(sim, metrics=MarketMetrics(CollectorRegistry()))
    )
    broker.connect()
    yield broker


def row(r: Rig, sql: str, *args: object) -> tuple:
    with r.pool.connection() as conn:
        found = conn.execute(sql, args).fetchone()
    assert found is not None, sql
    return found


def booked(r: Rig, tag: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """The order's, its position's and its opening deal's price, and its volume."""
    return row(
        r,
        "SELECT o.price, p.price, d.price, o.volume FROM paper_orders o JOIN paper_positions p USING (ticket)"
        " JOIN paper_deals d ON d.ticket = o.ticket AND d.kind = 'open' WHERE o.cluster = %s AND o.tag = %s",
        r.cluster,
        tag,
    )


def signal_row(r: Rig, fp: str) -> tuple[str, Decimal | None, str | None]:
    return row(
        r, "SELECT status, fill_price, error FROM signals WHERE cluster = %s AND fingerprint = %s", r.cluster, fp
    )


def test_market_orders_fill_at_the_ask_and_the_bid_sized_by_the_markets_spec(
    rig: Rig,  # noqa: F811
    database_url: str,
    sim: SimSource,
    priced: PaperBroker,
) -> None:
    tick = sim.tick("EURUSD")
    pip = Decimal("0.0001")
    # Priced 2 pips off the market (within the 0.5 % tolerance), so a fill at the signal's
    # price would show. Risk 1 % of 100000 x 0.95 over a 100-pip stop at 1 USD per point
    # per lot (contract 100000): 950 / 1000 = 0.95 lots; at contract size 1 it would be 100.
    buy_fp, buy_tag, _ = submit(
        rig, 1, price=str(tick.ask + 2 * pip), sl=str(tick.ask - 100 * pip), volume=None, risk_pct="1"
    )
    sell_fp, sell_tag, _ = submit(rig, 2, side="sell", price=str(tick.bid - 2 * pip), sl=str(tick.bid + 100 * pip))
    unknown_fp, _, _ = submit(rig, 3, symbol="EURXYZ", price="1.1", sl="1.09")
    limit_fp, limit_tag, _ = submit(rig, 4, type="limit", price=str(tick.bid - 50 * pip), sl=str(tick.bid - 150 * pip))
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    ex = start_executor(rig, database_url, broker=priced)
    try:
        wait_for(
            lambda: all(signal_row(rig, fp)[0] != "received" for fp in (buy_fp, sell_fp, unknown_fp, limit_fp)),
            10,
            "every signal settled",
        )
    finally:
        ex.stop(5)
    assert booked(rig, buy_tag) == (tick.ask, tick.ask, tick.ask, Decimal("0.95"))
    assert booked(rig, sell_tag) == (tick.bid, tick.bid, tick.bid, Decimal("0.01"))
    assert signal_row(rig, buy_fp)[:2] == ("executed", tick.ask)
    assert signal_row(rig, sell_fp)[:2] == ("executed", tick.bid)
    status, _, error = signal_row(rig, unknown_fp)
    assert status == "rejected" and error.startswith("risk symbol_spec: unknown symbol 'EURXYZ': the sim source has")
    assert "\n" not in error
    # A limit order rests at its own price (the venue process fills it later).
    assert signal_row(rig, limit_fp)[0] == "executed"
    assert row(
        rig, "SELECT price, state FROM paper_orders WHERE cluster = %s AND tag = %s", rig.cluster, limit_tag
    ) == (
        tick.bid - 50 * pip,
        "pending",
    )
    account = priced.account()
    assert account.equity == account.balance  # not marked to market (the venue process's job)


def test_a_stale_price_is_rejected_never_filled(rig: Rig, database_url: str, sim: SimSource) -> None:  # noqa: F811
    broker = PaperBroker(
        rig.pool,
        rig.cluster,
        "leader",
        market=Market(sim, metrics=MarketMetrics(CollectorRegistry())),
        max_quote_age_ms=100,  # the tick in force is 120 ms old
    )
    broker.connect()
    tick = sim.tick("EURUSD")
    fp, tag, _ = submit(rig, 5, price=str(tick.ask), sl=str(tick.ask - Decimal("0.01")))
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    ex = start_executor(rig, database_url, broker=broker)
    try:
        wait_for(lambda: signal_row(rig, fp)[0] != "received", 10, "the signal settled")
    finally:
        ex.stop(5)
    status, fill, error = signal_row(rig, fp)
    assert (status, fill) == ("rejected", None)
    assert error == (
        "risk symbol_spec: no fresh price for EURUSD: EURUSD tick at 2026-03-04T14:00:07.000Z is 0.120 s old,"
        " older than the 0.100 s accepted"
    )
    assert broker.find_by_tag(tag) == []


def test_an_order_sent_without_a_quoted_price_is_booked_at_the_price_quoted_now(
    rig: Rig,  # noqa: F811
    sim: SimSource,
    priced: PaperBroker,
) -> None:
    """`send` outside the executor (no `quoted`): the venue quotes it itself, in the same one
    statement for the whole batch; an order it cannot quote is refused, the rest booked."""
    epoch = lead(rig.pool, rig.cluster, "leader")
    tick = sim.tick("GBPUSD")
    base = OrderRequest(
        "HXPRICEDBUY", "GBPUSD", Side.BUY, OrderType.MARKET, Decimal("0.1"), Decimal("1"), Decimal("0.5"), None, epoch
    )
    sell = replace(base, tag="HXPRICEDSELL", side=Side.SELL, sl=Decimal("2"))
    nowhere = replace(base, tag="HXNOWHERE", symbol="EURXYZ")
    results = priced.book([base, nowhere, sell])
    assert [r.outcome for r in results] == [Outcome.DONE, Outcome.REJECTED, Outcome.DONE]
    assert (results[0].price, results[2].price) == (tick.ask, tick.bid)
    assert results[1].detail.startswith("paper broker: unknown symbol 'EURXYZ'")
    assert booked(rig, "HXPRICEDBUY")[:3] == (tick.ask,) * 3
    assert booked(rig, "HXPRICEDSELL")[:3] == (tick.bid,) * 3
    assert priced.find_by_tag("HXNOWHERE") == []
    again = priced.send(base)  # a tag is booked once; the answer is that order, at its fill
    assert (again.outcome, again.ref, again.price) == (Outcome.DONE, results[0].ref, tick.ask)


def test_a_replica_closes_at_the_bid_or_ask_with_its_realised_pnl(
    rig: Rig,  # noqa: F811
    sim: SimSource,
    priced: PaperBroker,
) -> None:
    """With a market, a close is at the side of the book it trades (a buy sells at the bid),
    its P&L realised into the balance and a deal, fenced by the epoch; never at entry."""
    epoch = lead(rig.pool, rig.cluster, "leader")
    tick = sim.tick("EURUSD")
    buy = OrderRequest(
        "HXCLOSEBUY", "EURUSD", Side.BUY, OrderType.MARKET, Decimal("1"), Decimal("1"), Decimal("0.5"), None, epoch
    )
    opened = priced.send(buy)
    assert opened.outcome is Outcome.DONE and opened.price == tick.ask and opened.ref is not None
    before = priced.account().balance
    closed = priced.close_position(opened.ref, epoch)
    assert closed.outcome is Outcome.DONE and closed.price == tick.bid
    spread_cost = (tick.bid - tick.ask) * 100_000  # 1 lot of EURUSD, closed the moment it opened
    assert priced.account().balance == before + spread_cost
    assert row(rig, "SELECT close_price, pnl FROM paper_positions WHERE ticket = %s", int(opened.ref)) == (
        tick.bid,
        spread_cost,
    )
    again = priced.close_position(opened.ref, epoch)
    assert again.outcome is Outcome.REJECTED and "no open position" in again.detail
