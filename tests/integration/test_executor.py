"""The leader's executor in this process, on real Redis and PostgreSQL with the paper broker:
in-doubt resolution, kill switch, expiry, the non-fencing venue's hold and adoption."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from psycopg_pool import ConnectionPool

from coordinator.config import ElectionConfig
from coordinator.service import Coordinator
from db.session import SessionLimits, make_pool
from engine import controls, store
from engine.breaker import CircuitBreaker
from engine.brokers.base import OrderRequest, OrderResult, Outcome
from engine.brokers.paper import PaperBroker
from engine.executor import Executor, ExecutorConfig
from engine.model import OrderType, Side
from engine.risk import RiskLimits
from engine.signal import canonical_payload, fingerprint, intent_digest, order_tag, parse_signal
from tests.support import wait_for


@dataclass
class Rig:
    cluster: str
    pool: ConnectionPool
    coordinator: Coordinator
    broker: PaperBroker

    def status(self, fp: str) -> str:
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT status FROM signals WHERE cluster = %s AND fingerprint = %s", (self.cluster, fp)
            ).fetchone()[0]

    def orders(self, tag: str) -> int:
        return len(self.broker.find_by_tag(tag))


@pytest.fixture
def rig(cluster: str, redis_url: str, database_url: str) -> Iterator[Rig]:
    pool = make_pool(database_url, SessionLimits(2000, "test-exec"), name="test-exec", max_size=4)
    pool.open(wait=True, timeout=10)
    coord = Coordinator(ElectionConfig.for_lease(cluster, "leader", 1500), redis_url, database_url)
    coord.open(10)
    broker = PaperBroker(pool, cluster, "leader")
    broker.connect()
    yield Rig(cluster, pool, coord, broker)
    coord.stop()
    pool.close()


def submit(rig: Rig, i: int, **extra: object) -> tuple[str, str, int]:
    fields: dict[str, object] = {
        "source": "t",
        "signal_id": f"x{i}",
        "symbol": "EURUSD",
        "side": "buy",
        "type": "market",
        "volume": "0.01",
        "price": "1.1",
        "sl": "1.09",
        **extra,
    }
    intent = parse_signal({k: v for k, v in fields.items() if v is not None})  # None drops a default
    fp = fingerprint(intent)
    with rig.pool.connection() as conn:
        store.accept(
            conn,
            rig.cluster,
            "t",
            fp,
            intent_digest(intent),
            order_tag(fp),
            canonical_payload(intent),
            "t",
            intent.signal_id,
            intent.expires_at,
        )
        sid = conn.execute(
            "SELECT id FROM signals WHERE cluster = %s AND fingerprint = %s", (rig.cluster, fp)
        ).fetchone()[0]
    return fp, order_tag(fp), sid


def leave_in_flight(rig: Rig, sid: int, epoch: int) -> None:
    """What a leader that died mid-call leaves: the signal executing under its epoch."""
    with rig.pool.connection() as conn:
        conn.execute(
            "UPDATE signals SET status = 'executing', epoch = %s, attempt_at = clock_timestamp() - interval '1 hour' "
            "WHERE id = %s",
            (epoch, sid),
        )


def start_executor(
    rig: Rig, database_url: str, broker: object | None = None, limits: RiskLimits | None = None, **cfg: object
) -> Executor:
    ex = Executor(
        ExecutorConfig(
            cluster=rig.cluster, instance_id="leader", broker_deadline_ms=300, drift_margin_ms=50, sweep_ms=100, **cfg
        ),
        rig.coordinator,
        rig.pool,
        database_url,
        broker or rig.broker,
        CircuitBreaker(broker="paper"),
        limits or RiskLimits(),
    )
    ex.start()
    return ex


def book_under(rig: Rig, tag: str, epoch: int) -> None:
    rig.broker.send(
        OrderRequest(
            tag, "EURUSD", Side.BUY, OrderType.MARKET, Decimal("0.01"), Decimal("1.1"), Decimal("1.09"), None, epoch
        )
    )


@pytest.mark.parametrize("left_by", ["an earlier epoch", "this epoch"])
def test_an_unsettled_attempt_at_the_paper_broker_is_settled_from_its_tag_or_re_executed(
    rig: Rig, database_url: str, left_by: str
) -> None:
    """A leader booked the first signal and never recorded it, and never sent the second: it
    died (an earlier epoch), or the database went away before the outcome or a hand-back was
    written (this epoch). The leader settles both, each with exactly one order."""
    from tests.integration.test_paper import lead

    booked_fp, booked_tag, booked_id = submit(rig, 1)
    lost_fp, lost_tag, lost_id = submit(rig, 2)

    def leave_unsettled(epoch: int) -> None:
        book_under(rig, booked_tag, epoch)
        leave_in_flight(rig, booked_id, epoch)
        leave_in_flight(rig, lost_id, epoch)

    if left_by == "an earlier epoch":
        leave_unsettled(lead(rig.pool, rig.cluster, "old"))
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    if left_by == "this epoch":
        leave_unsettled(rig.coordinator.elector.epoch)
    ex = start_executor(rig, database_url)
    try:
        wait_for(lambda: rig.status(booked_fp) == rig.status(lost_fp) == "executed", 10, "both settled")
    finally:
        ex.stop(5)
    assert rig.orders(booked_tag) == 1 and rig.orders(lost_tag) == 1
    (found,) = rig.broker.find_by_tag(lost_tag)
    assert found.epoch == rig.coordinator.elector.epoch  # re-executed under the leader's epoch


def test_kill_switch_rejects_and_expired_signals_never_execute(rig: Rig, database_url: str) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    expired_fp, expired_tag, _ = submit(rig, 3, expires_at=past)
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    with rig.pool.connection() as conn:
        controls.write(conn, rig.cluster, True, "news at 14:30", "cli:ops")
    halted_fp, halted_tag, _ = submit(rig, 4)
    ex = start_executor(rig, database_url)
    try:
        wait_for(lambda: rig.status(halted_fp) == "rejected", 10, "halted signal rejected")
        wait_for(lambda: rig.status(expired_fp) == "expired", 10, "expired signal expired")
        assert REGISTRY.get_sample_value("haexec_halted") == 1
        with rig.pool.connection() as conn:
            controls.write(conn, rig.cluster, False, None, "cli:ops")
        wait_for(lambda: REGISTRY.get_sample_value("haexec_halted") == 0, 10, "the resume sampled")
    finally:
        ex.stop(5)
    assert rig.orders(halted_tag) == 0 and rig.orders(expired_tag) == 0
    with rig.pool.connection() as conn:
        error = conn.execute(
            "SELECT error FROM signals WHERE cluster = %s AND fingerprint = %s", (rig.cluster, halted_fp)
        ).fetchone()[0]
    assert re.fullmatch(r"halted: trading is halted by cli:ops since \S+: news at 14:30", error), error


def test_a_signal_on_a_held_symbol_is_rejected_naming_the_hold(rig: Rig, database_url: str) -> None:
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    ex = start_executor(rig, database_url)
    ex.held_symbols = lambda: {"EURUSD": "position 7 is gone from the venue with no deal"}
    held_fp, held_tag, _ = submit(rig, 5)  # EURUSD, submitted once the hold is in place
    other_fp, other_tag, _ = submit(rig, 6, symbol="GBPUSD")
    try:
        wait_for(lambda: rig.status(held_fp) == "rejected", 10, "the held symbol's signal rejected")
        wait_for(lambda: rig.status(other_fp) == "executed", 10, "another symbol's signal executed")
    finally:
        ex.stop(5)
    assert rig.orders(held_tag) == 0 and rig.orders(other_tag) == 1
    with rig.pool.connection() as conn:
        error = conn.execute(
            "SELECT error FROM signals WHERE cluster = %s AND fingerprint = %s", (rig.cluster, held_fp)
        ).fetchone()[0]
    assert error == "held EURUSD: position 7 is gone from the venue with no deal"


class NonFencingVenue:
    """The paper book seen through a venue that cannot fence (like MT5): it ignores epochs, and
    can show one tag on two orders (booked as `<tag>` and `<tag>D`), which MT5 allows."""

    name = "mt5-like"
    fencing_aware = False
    records_in_transaction = False

    def __init__(self, paper: PaperBroker) -> None:
        self._paper = paper
        self.visible = True

    def __getattr__(self, name: str) -> object:
        return getattr(self._paper, name)

    def send(self, req: OrderRequest, within: object = None) -> OrderResult:
        return self._paper.send(req)

    def find_by_tag(self, tag: str) -> list:
        if not self.visible:
            return []
        found = self._paper.find_by_tag(tag) + self._paper.find_by_tag(tag + "D")
        return [replace(o, tag=tag) for o in found if o.state != "history"]

    def close_position(self, ticket: str, epoch: int | None = None) -> OrderResult:
        return self._paper.close_position(ticket, None)


def test_a_venue_that_cannot_fence_holds_then_adopts_and_closes_duplicates(rig: Rig, database_url: str) -> None:
    from tests.integration.test_paper import lead

    fp, tag, sid = submit(rig, 5)
    old = lead(rig.pool, rig.cluster, "old")
    leave_in_flight(rig, sid, old)
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    venue = NonFencingVenue(rig.broker)
    ex = start_executor(rig, database_url, broker=venue, in_doubt_policy="hold")
    try:
        wait_for(lambda: rig.status(fp) == "in_doubt", 10, "held in doubt")
        assert rig.orders(tag) == 0  # hold: never re-executed blindly
        # The paused ex-leader's order turns up later, twice (a duplicate at the venue).
        venue.visible = False
        epoch = rig.coordinator.elector.epoch
        book_under(rig, tag, epoch)
        book_under(rig, tag + "D", epoch)
        venue.visible = True
        wait_for(lambda: rig.status(fp) == "executed", 10, "adopted as executed")
        wait_for(lambda: len(venue.find_by_tag(tag)) == 1, 10, "the duplicate closed")
    finally:
        ex.stop(5)
    with rig.pool.connection() as conn:
        events = [r[0] for r in conn.execute("SELECT detail FROM signal_events WHERE signal = %s ORDER BY id", (sid,))]
    assert any("held" in (e or "") for e in events) and any("found at the broker" in (e or "") for e in events)


def test_in_doubt_at_the_paper_broker_with_its_tag_absent_is_re_executed(rig: Rig, database_url: str) -> None:
    """A booking whose COMMIT went unanswered: absent at a fencing-aware venue means never booked."""
    fp, tag, sid = submit(rig, 6)
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    with rig.pool.connection() as conn:
        conn.execute(
            "UPDATE signals SET status = 'in_doubt', epoch = %s, attempt_at = clock_timestamp() WHERE id = %s",
            (rig.coordinator.elector.epoch, sid),
        )
    ex = start_executor(rig, database_url)
    try:
        wait_for(lambda: rig.status(fp) == "executed", 10, "re-executed")
    finally:
        ex.stop(5)
    assert rig.orders(tag) == 1


def test_a_claimed_batch_is_sized_in_order_and_booked_with_its_outcomes_in_one_transaction(
    rig: Rig, database_url: str
) -> None:
    big = submit(rig, 10, volume="200")  # over max_volume
    small = [submit(rig, 11 + i) for i in range(5)]
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    ex = start_executor(rig, database_url, limits=RiskLimits(max_open_positions=3))
    try:
        wait_for(lambda: all(rig.status(fp) not in ("received", "executing") for fp, _, _ in [big, *small]), 10, "all")
    finally:
        ex.stop(5)
    # Orders counted as opened before the venue answered: the fourth and fifth meet the limit.
    assert [rig.status(fp) for fp, _, _ in small] == ["executed"] * 3 + ["rejected"] * 2
    assert rig.status(big[0]) == "rejected"
    with rig.pool.connection() as conn:
        errors = dict(
            conn.execute("SELECT id, error FROM signals WHERE cluster = %s AND status = 'rejected'", (rig.cluster,))
        )
        assert "max_volume" in errors[big[2]] and "max_open_positions" in errors[small[4][2]]
        # One claim, one booking: the three orders and their signals' outcomes share a transaction.
        (claims,) = conn.execute(
            "SELECT count(DISTINCT e.xmin::text) FROM signal_events e JOIN signals s ON s.id = e.signal "
            "WHERE s.cluster = %s AND e.status = 'executing'",
            (rig.cluster,),
        ).fetchone()
        assert claims == 1
        writers = conn.execute(
            "SELECT DISTINCT o.xmin::text FROM paper_orders o WHERE o.cluster = %s "
            "UNION SELECT DISTINCT s.xmin::text FROM signals s WHERE s.cluster = %s AND s.status = 'executed'",
            (rig.cluster, rig.cluster),
        ).fetchall()
        assert len(writers) == 1


class UnansweredVenue(PaperBroker):
    """The paper book whose first booking's COMMIT goes unanswered (and did not commit)."""

    def __init__(self, paper: PaperBroker) -> None:
        super().__init__(paper._pool, paper._cluster, paper._instance)
        self.lost = 0

    def book(self, reqs: list[OrderRequest], within: object = None) -> list[OrderResult]:
        if not self.lost:
            self.lost = len(reqs)
            return [OrderResult(Outcome.UNKNOWN, detail="paper broker: connection lost at COMMIT") for _ in reqs]
        return super().book(reqs, within)


def test_a_batch_whose_booking_went_unanswered_is_in_doubt_then_each_signal_executes_once(
    rig: Rig, database_url: str
) -> None:
    signals = [submit(rig, 20 + i) for i in range(4)]
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    venue = UnansweredVenue(rig.broker)
    ex = start_executor(rig, database_url, broker=venue)
    try:
        wait_for(lambda: all(rig.status(fp) == "executed" for fp, _, _ in signals), 10, "all re-executed")
    finally:
        ex.stop(5)
    assert venue.lost == 4
    assert [rig.orders(tag) for _, tag, _ in signals] == [1, 1, 1, 1]
    with rig.pool.connection() as conn:
        for _, _, sid in signals:
            history = [
                r[0] for r in conn.execute("SELECT status FROM signal_events WHERE signal = %s ORDER BY id", (sid,))
            ]
            assert history == ["received", "executing", "in_doubt", "executing", "executed"]


def test_a_batch_risk_rejects_entirely_never_reaches_the_venue(
    rig: Rig, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every signal of the claim refused by risk: nothing to book, and no traceback (the
    venue used to be called with an empty batch and raise)."""
    fps = [submit(rig, 20 + i, volume="1000")[0] for i in range(3)]  # above max_volume 100
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    ex = start_executor(rig, database_url)
    try:
        wait_for(lambda: all(rig.status(fp) == "rejected" for fp in fps), 10, "all rejected")
        ok_fp, ok_tag, _ = submit(rig, 30)
        wait_for(lambda: rig.status(ok_fp) == "executed", 10, "the next signal executed")
    finally:
        ex.stop(5)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert rig.orders(ok_tag) == 1
