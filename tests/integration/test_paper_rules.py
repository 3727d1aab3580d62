"""The paper broker holds an order to the venue's rules before it books it (a closed market,
a close-only symbol, a stop inside the stops level are refused in one line, nothing
booked), quotes the margin a lot holds at the venue's leverage, and answers a retry of a tag
booked already with that order even when the order would be refused now."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from engine.brokers.base import OrderRequest, Outcome
from engine.brokers.paper import PaperBroker
from engine.market import Market, TradeMode
from engine.market.metrics import MarketMetrics
from engine.market.sim import SimSource
from engine.model import Side
from engine.venue.hours import parse_hours
from engine.venue.settings import VenueSettings
from tests.integration.test_paper import lead, order, pool  # noqa: F401 (pool is a fixture)
from tests.market_support import MarketClock

T = int(datetime(2026, 3, 4, 14, 0, 7, tzinfo=UTC).timestamp() * 1000) + 120  # a Wednesday


def broker_at(pool: ConnectionPool, cluster: str, venue: VenueSettings, **kw: int) -> tuple[PaperBroker, SimSource]:  # noqa: F811
    sim = SimSource(0, clock=MarketClock(T))
    broker = PaperBroker(
        pool, cluster, "a", market=Market(sim, metrics=MarketMetrics(CollectorRegistry())), venue=venue, **kw
    )
    broker.connect()
    return broker, sim


def at_market(sim: SimSource, tag: str, epoch: int, sl_pips: str = "100") -> OrderRequest:
    tick = sim.tick("EURUSD")
    return replace(order(tag, epoch), price=tick.ask, sl=tick.bid - Decimal(sl_pips) * Decimal("0.0001"))


@pytest.mark.parametrize(
    ("venue", "rule"),
    [
        (VenueSettings(hours=parse_hours("EURUSD=never")), "paper venue market_closed: the EURUSD market is closed"),
        (
            VenueSettings(trade_modes={"EURUSD": TradeMode.CLOSE_ONLY}),
            "paper venue trade_mode: EURUSD is close-only: positions may be closed, not opened",
        ),
    ],
)
def test_an_order_the_venue_would_refuse_is_refused_and_not_booked(
    pool: ConnectionPool,  # noqa: F811
    cluster: str,
    venue: VenueSettings,
    rule: str,
) -> None:
    broker, sim = broker_at(pool, cluster, venue)
    epoch = lead(pool, cluster, "a")
    result = broker.send(at_market(sim, "HXRULE1", epoch))
    assert (result.outcome, result.detail) == (Outcome.REJECTED, rule)
    assert broker.find_by_tag("HXRULE1") == []


def test_a_stop_inside_the_stops_level_is_refused(pool: ConnectionPool, cluster: str) -> None:  # noqa: F811
    broker, sim = broker_at(pool, cluster, VenueSettings())
    epoch = lead(pool, cluster, "a")
    # EURUSD's stops level is 10 points (0.00010): a stop 0.5 pip under the bid is too close.
    close = broker.send(at_market(sim, "HXRULE2", epoch, sl_pips="0.5"))
    assert close.outcome is Outcome.REJECTED and close.detail.startswith("paper venue stops_level:")
    assert broker.send(at_market(sim, "HXRULE3", epoch)).outcome is Outcome.DONE


def test_a_quote_states_the_margin_of_a_lot_at_the_venues_leverage(pool: ConnectionPool, cluster: str) -> None:  # noqa: F811
    broker, sim = broker_at(pool, cluster, VenueSettings(leverage=50))
    quote = broker.quote("EURUSD")
    # 100,000 EUR at the ask in USD, over 1:50, to the cent.
    assert quote.margin_per_lot == (Decimal(100000) * sim.tick("EURUSD").ask / 50).quantize(Decimal("0.01"))
    assert PaperBroker(pool, cluster, "a", market=broker.market).quote("EURUSD").margin_per_lot is None


def test_a_retry_of_a_booked_tag_is_answered_with_its_order_even_if_refused_now(
    pool: ConnectionPool,  # noqa: F811
    cluster: str,
) -> None:
    broker, sim = broker_at(pool, cluster, VenueSettings())
    epoch = lead(pool, cluster, "a")
    req = replace(at_market(sim, "HXRULE4", epoch), quoted=None)
    first = broker.send(req)
    assert first.outcome is Outcome.DONE
    # The same tag again (a retry after a crash) at a broker that can no longer price it:
    # the order that is there is the answer, never a refusal of an order that exists.
    stale = PaperBroker(pool, cluster, "a", market=broker.market, max_quote_age_ms=0)
    again = stale.send(req)
    assert (again.outcome, again.ref) == (Outcome.DONE, first.ref)
    assert [o.side for o in broker.find_by_tag("HXRULE4")] == [Side.BUY]
