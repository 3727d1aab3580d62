"""The account as an operator reads it, on real PostgreSQL: open positions marked at the
market (a sim on a fixed clock, so the P&L is computed by hand), GET /account and
GET /positions behind the bearer token, and `haexec account|positions|deals` with bad input
refused in one line."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from engine.brokers.base import Outcome
from engine.brokers.paper import PaperBroker
from engine.market import Market
from engine.market.metrics import MarketMetrics
from engine.market.sim import SimSource
from haexec import book
from haexec.cli_common import since_arg
from tests.integration.test_http_server import Serve, StubReplica, auth, request, serve  # noqa: F401 (fixture)
from tests.integration.test_paper import lead, order, pool  # noqa: F401 (pool is a fixture)
from tests.market_support import MarketClock
from tests.support import run_cli

T = int(datetime(2026, 3, 4, 14, 0, 7, tzinfo=UTC).timestamp() * 1000) + 120


def priced(pool: ConnectionPool, cluster: str) -> tuple[PaperBroker, Market, SimSource]:  # noqa: F811
    sim = SimSource(0, clock=MarketClock(T))
    market = Market(sim, metrics=MarketMetrics(CollectorRegistry()))
    broker = PaperBroker(pool, cluster, "a", market=market)
    broker.connect()
    return broker, market, sim


def test_a_position_is_marked_at_the_bid_with_its_floating_pnl_to_the_cent(pool: ConnectionPool, cluster: str) -> None:  # noqa: F811
    broker, market, sim = priced(pool, cluster)
    tick = sim.tick("EURUSD")
    epoch = lead(pool, cluster, "a")
    booked = broker.send(replace(order("HXVIEW1", epoch), quoted=tick.ask))
    assert booked.outcome is Outcome.DONE
    [row] = book.read_positions(broker, market, 5000)["positions"]
    # Bought 0.10 lots at the ask, marked at the bid: the spread is the loss, at 100,000 USD
    # per 1.0 of EURUSD per lot (tick value 1 per tick 0.00001).
    expected = ((tick.bid - tick.ask) * Decimal("0.10") * 100000).quantize(Decimal("0.01"))
    assert row["current"] == str(tick.bid) and Decimal(row["floating"]) == expected < 0
    assert (row["side"], row["volume"], row["sl"], row["tag"]) == ("buy", "0.10", "1.0900", "HXVIEW1")
    # No price younger than the age asked for: no mark at all, and why.
    [stale] = book.read_positions(broker, market, 0)["positions"]
    assert stale["floating"] is None and stale["current"] is None and "old" in stale["price_error"]


@dataclass
class AccountReplica(StubReplica):
    broker: Any = None
    market: Any = None
    market_max_age_ms: int = 5000
    calls: list[str] = field(default_factory=list)


def test_get_account_and_positions_need_the_token_and_answer_json(
    pool: ConnectionPool,  # noqa: F811
    cluster: str,
    serve: Serve,  # noqa: F811
) -> None:
    broker, market, sim = priced(pool, cluster)
    epoch = lead(pool, cluster, "a")
    broker.send(replace(order("HXVIEW2", epoch), quoted=sim.tick("EURUSD").ask))
    server = serve(AccountReplica(broker=broker, market=market))
    assert request(server.port, "GET", "/account")[0] == 401
    assert request(server.port, "GET", "/positions")[0] == 401
    status, account = request(server.port, "GET", "/account", headers=auth())
    assert status == 200 and account["balance"] == "100000" and account["currency"] == "USD"
    status, positions = request(server.port, "GET", "/positions", headers=auth())
    assert status == 200 and [p["tag"] for p in positions["positions"]] == ["HXVIEW2"]


def test_the_cli_shows_account_positions_and_deals_and_refuses_a_bad_since(
    pool: ConnectionPool,  # noqa: F811
    cluster: str,
    database_url: str,
    redis_url: str,
) -> None:
    broker, _market, sim = priced(pool, cluster)
    epoch = lead(pool, cluster, "a")
    broker.send(replace(order("HXVIEW3", epoch), quoted=sim.tick("EURUSD").ask))
    env = {"HAEXEC_CLUSTER": cluster, "HAEXEC_DATABASE_URL": database_url, "HAEXEC_REDIS_URL": redis_url}
    account = run_cli(["account", "--json"], env)
    assert account.returncode == 0, account.stderr
    assert json.loads(account.stdout)["balance"] == "100000"
    positions = run_cli(["positions", "--json"], env)
    assert positions.returncode == 0, positions.stderr
    [row] = json.loads(positions.stdout)["positions"]
    assert row["tag"] == "HXVIEW3" and row["floating"] is not None  # the sim at the wall clock is fresh
    deals = run_cli(["deals", "--json", "--since", "2000-01-01T00:00:00Z"], env)
    assert deals.returncode == 0, deals.stderr
    assert [(d["kind"], d["volume"]) for d in json.loads(deals.stdout)["deals"]] == [("open", "0.10")]
    bad = run_cli(["deals", "--since", "yesterday"], env)
    assert bad.returncode == 2 and "must be an ISO 8601 time" in bad.stderr and "Traceback" not in bad.stderr


def test_since_must_be_an_iso_time_with_its_zone() -> None:
    assert since_arg("2026-12-04T00:00:00Z") == datetime(2026, 12, 4, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="must say its time zone"):
        since_arg("2026-12-04T00:00:00")
