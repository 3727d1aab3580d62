"""The paper broker as a fencing-aware venue, and the outcome compare-and-set, on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from coordinator.epoch import EpochStore
from coordinator.fencing import EpochSuperseded
from db.session import SessionLimits, make_pool
from db.urls import libpq_url
from engine import store
from engine.brokers.base import OrderRequest, OrderResult, Outcome
from engine.brokers.paper import PaperBroker
from engine.model import OrderType, Side, SignalStatus
from engine.venue import ledger
from engine.venue.pnl import Mark


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = make_pool(database_url, SessionLimits(2000, "test-paper"), name="test-paper", max_size=3)
    p.open(wait=True, timeout=10)
    yield p
    p.close()


def lead(pool: ConnectionPool, cluster: str, me: str) -> int:
    """Take the cluster's epoch the way an elector does (stale or released record)."""
    epochs = EpochStore(pool, cluster, stale_after_ms=1, handoff_ms=1)
    record = epochs.read()
    if record.instance_id is not None:
        epochs.release(record.epoch, record.instance_id, "released:test")
    epoch = epochs.claim(record.epoch, me)
    assert epoch is not None
    return epoch


def order(tag: str, epoch: int) -> OrderRequest:
    return OrderRequest(
        tag=tag,
        symbol="EURUSD",
        side=Side.BUY,
        type=OrderType.MARKET,
        volume=Decimal("0.10"),
        price=Decimal("1.1000"),
        sl=Decimal("1.0900"),
        tp=None,
        epoch=epoch,
    )


def test_books_only_under_the_current_epoch_and_each_tag_once(pool: ConnectionPool, cluster: str) -> None:
    broker = PaperBroker(pool, cluster, "a")
    broker.connect()
    e1 = lead(pool, cluster, "a")
    first = broker.send(order("HXAAAA", e1))
    assert first.outcome is Outcome.DONE and first.ref
    again = broker.send(order("HXAAAA", e1))
    assert again.outcome is Outcome.DONE and again.ref == first.ref  # the venue dedupes by tag
    e2 = lead(pool, cluster, "b")
    with pytest.raises(EpochSuperseded):
        broker.send(order("HXBBBB", e1))  # a deposed leader cannot book
    assert broker.find_by_tag("HXBBBB") == []
    assert len(broker.find_by_tag("HXAAAA")) == 1
    assert broker.send(order("HXBBBB", e2)).outcome is Outcome.DONE
    assert [p.tag for p in broker.positions()] == ["HXAAAA", "HXBBBB"]
    assert broker.account().balance == Decimal("100000")


def test_outcome_commits_with_the_booking_and_a_stale_outcome_never_overwrites(
    pool: ConnectionPool, cluster: str, database_url: str
) -> None:
    broker = PaperBroker(pool, cluster, "a")
    broker.connect()
    epoch = lead(pool, cluster, "a")
    with pool.connection() as conn:
        accepted = store.accept(conn, cluster, "a", "f" * 64, "d", "HXCCCC", {"k": 1}, "src", None, None)
        assert accepted.status == "received" and not accepted.duplicate
        sid = conn.execute("SELECT id FROM signals WHERE cluster = %s", (cluster,)).fetchone()[0]
        with conn.transaction(), conn.cursor() as cur:
            assert [c.id for c in store.claim(cur, cluster, "a", epoch, 64).claimed] == [sid]

    def within(cur: psycopg.Cursor, results: list[OrderResult]) -> None:
        (result,) = results
        store.record_outcomes(cur, epoch, "a", [store.Settlement(sid, SignalStatus.EXECUTED, "done", ref=result.ref)])

    (booked,) = broker.book([order("HXCCCC", epoch)], within)
    assert booked.outcome is Outcome.DONE
    with psycopg.connect(libpq_url(database_url)) as conn:
        assert conn.execute("SELECT status, epoch, broker_ref FROM signals WHERE id = %s", (sid,)).fetchone() == (
            "executed",
            epoch,
            booked.ref,
        )
        with conn.transaction(), conn.cursor() as cur:
            # An older attempt's late answer is kept as a fact but changes nothing.
            stale = store.Settlement(sid, SignalStatus.FAILED, "failed", error="x")
            assert store.record_outcomes(cur, epoch - 1, "old", [stale]) == {}
        assert conn.execute("SELECT status FROM signals WHERE id = %s", (sid,)).fetchone() == ("executed",)
        facts = conn.execute("SELECT epoch, outcome FROM executions WHERE signal = %s ORDER BY id", (sid,)).fetchall()
        assert facts == [(epoch, "done"), (epoch - 1, "failed")]


def test_an_order_past_its_expiry_is_not_booked(pool: ConnectionPool, cluster: str) -> None:
    broker = PaperBroker(pool, cluster, "a")
    broker.connect()
    epoch = lead(pool, cluster, "a")
    now = datetime.now(UTC)
    late, fresh = (
        replace(order("HXLATE", epoch), expires_at=now),
        replace(order("HXNEW", epoch), expires_at=now + timedelta(minutes=1)),
    )
    results = broker.book([late, fresh])
    assert [r.outcome for r in results] == [Outcome.EXPIRED, Outcome.DONE]
    with pool.connection() as conn:
        kept = conn.execute("SELECT expires_at FROM paper_orders WHERE cluster = %s AND tag = 'HXNEW'", (cluster,))
        assert kept.fetchone() == (fresh.expires_at,)
    assert broker.find_by_tag("HXLATE") == []
    # a tag booked before it expired answers with its order, never EXPIRED
    assert broker.send(replace(fresh, expires_at=now - timedelta(minutes=1))).outcome is Outcome.DONE


def test_pending_orders_are_exposure_and_can_be_cancelled(pool: ConnectionPool, cluster: str) -> None:
    broker = PaperBroker(pool, cluster, "a")
    broker.connect()
    epoch = lead(pool, cluster, "a")
    broker.send(order("HXMKT", epoch))
    limit = broker.send(replace(order("HXLMT", epoch), type=OrderType.LIMIT, price=Decimal("1.0950")))
    assert broker.open_exposure() == 2
    with pool.connection() as conn:  # a pending order keeps its expiry, for the venue to expire it
        expiry = conn.execute("SELECT expires_at FROM paper_orders WHERE cluster = %s AND tag = 'HXLMT'", (cluster,))
        assert expiry.fetchone() == (None,)
    assert [o.state for o in broker.find_by_tag("HXLMT")] == ["pending"]
    assert limit.ref is not None and broker.cancel_order(limit.ref, epoch).outcome is Outcome.DONE
    assert broker.open_exposure() == 1
    assert [o.state for o in broker.find_by_tag("HXLMT")] == ["history"]
    assert broker.cancel_order(limit.ref, epoch).outcome is Outcome.REJECTED
    lead(pool, cluster, "b")
    with pytest.raises(EpochSuperseded):
        broker.cancel_order(limit.ref, epoch)  # a deposed leader cancels nothing either


def test_the_account_is_marked_by_the_venue_while_its_mark_is_fresh(pool: ConnectionPool, cluster: str) -> None:
    """equity = balance + the venue's floating P&L, and today's loss counts an open loss, while
    the venue's mark is fresh; a stale mark (a venue that stopped) is never used."""
    broker = PaperBroker(pool, cluster, "a", initial_balance=Decimal("10000"))
    broker.connect()
    assert broker.account().equity == Decimal("10000")  # no venue yet: at entry
    losing = Mark(
        Decimal("10000"), Decimal("-250.50"), Decimal("9749.50"), Decimal("110"), Decimal("9639.50"), None, 1, 0
    )
    with pool.connection() as conn:
        ledger.write_mark(conn, cluster, losing, 100, None, "venue-test")
    marked = broker.account()
    assert (marked.balance, marked.equity, marked.daily_pnl) == (
        Decimal("10000"),
        Decimal("9749.50"),
        Decimal("-250.50"),
    )
    with pool.connection() as conn:
        conn.execute(
            "UPDATE paper_marks SET marked_at = clock_timestamp() - interval '1 minute' WHERE cluster = %s", (cluster,)
        )
    stale = broker.account()
    assert (stale.equity, stale.daily_pnl) == (Decimal("10000"), Decimal("0"))
