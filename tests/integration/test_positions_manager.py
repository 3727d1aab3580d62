"""The position manager on the paper broker and real PostgreSQL, with stand-in rules
(tests/positions_support.py): the stop guarantee, sending only the difference, verifying,
the journal, every venue answer by meaning, recovery, and a new leader resuming."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from common.clock import FakeClock
from coordinator.fencing import EpochSuperseded
from db.session import SessionLimits, make_pool
from engine import audit
from engine.brokers.base import OrderResult, Outcome, Refusal
from engine.brokers.paper import PaperBroker
from engine.positions import store
from engine.positions.fallback import Fallback
from engine.positions.manager import ManagerConfig, PositionManager
from engine.positions.metrics import PositionMetrics
from engine.positions.recovery import survey
from engine.positions.registration import NoSuchPosition, Registrar, RegistrationError
from engine.positions.wakeup import BookListener
from engine.risk import RiskLimits
from tests.integration.test_executor import Rig, rig, submit  # noqa: F401 (rig is a fixture)
from tests.integration.test_paper import lead
from tests.positions_support import D, EpochFencing, Prices, TrailRules, journal_kinds, manager, open_buy, venue_sl
from tests.support import wait_for


@pytest.fixture
def prices() -> Prices:
    p = Prices()
    p.set("EURUSD", "1.10000")
    return p


@pytest.fixture
def paper(rig: Rig, prices: Prices) -> Iterator[PaperBroker]:  # noqa: F811
    broker = PaperBroker(rig.pool, rig.cluster, "leader", market=prices)  # type: ignore[arg-type]
    broker.connect()
    yield broker


def register(broker: PaperBroker, cluster: str, ticket: str, sl: str | None = None) -> store.Managed:
    registrar = Registrar(broker._pool, broker, cluster, "paper", "leader", {}, canonical=lambda obj: dict(obj))
    row, created = registrar.register(
        {"ticket": ticket, "manage": {"t": 1}, **({"sl": sl} if sl else {})}, "test:operator"
    )
    assert created
    return row


def row_of(broker: PaperBroker, cluster: str, ticket: str) -> store.Managed:
    with broker._pool.connection() as conn:
        found = store.one(conn, cluster, "paper", ticket)
    assert found is not None
    return found


class Scripted(PaperBroker):
    """The paper broker answering modify with scripted refusals first."""

    answers: list[OrderResult]

    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None, epoch: int | None = None) -> OrderResult:
        self.calls = getattr(self, "calls", 0) + 1
        if self.answers:
            return self.answers.pop(0)
        return super().modify(ticket, sl, tp, epoch)

    def modify_many(self, stops: list[tuple[str, Decimal]], epoch: int) -> dict[str, OrderResult]:
        return {t: self.modify(t, sl, None, epoch) for t, sl in stops}


def scripted(rig: Rig, prices: Prices, *answers: OrderResult) -> Scripted:  # noqa: F811
    broker = Scripted(rig.pool, rig.cluster, "leader", market=prices)  # type: ignore[arg-type]
    broker.answers = list(answers)
    broker.connect()
    return broker


def test_a_naked_position_gets_its_stop_in_one_loop_verified_and_journalled(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = open_buy(paper, epoch, "HXNAKED1", sl=None)
    register(paper, rig.cluster, ticket, sl="1.09000")
    trail = TrailRules(distance=D("0.02000"))  # the trail is below the initial stop: the initial stop
    m = manager(paper, EpochFencing(rig.cluster, epoch), prices, trail)
    report = m.run_once()
    assert (report.naked, report.sent, report.verified) == (1, 1, 1)
    assert venue_sl(paper, ticket) == D("1.09000")
    row = row_of(paper, rig.cluster, ticket)
    assert (row.sent_sl, row.verified_sl, row.desired_sl) == (D("1.09000"),) * 3
    assert journal_kinds(paper, rig.cluster, ticket) == ["registered", "naked", "stop_set"]
    again = m.run_once()  # nothing differs: nothing is sent
    assert (again.naked, again.sent) == (0, 0)
    assert m.metrics.without_sl._value.get() == 0


@pytest.mark.parametrize("policy", ["close", "alert"])
def test_still_naked_past_the_deadline_is_closed_or_alerted(
    rig: Rig,  # noqa: F811
    prices: Prices,
    policy: str,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    failing = OrderResult(Outcome.REJECTED, detail="venue down", refusal=Refusal.OTHER)
    broker = scripted(rig, prices, *[failing] * 10)
    ticket = open_buy(broker, epoch, f"HXNAKED{policy}", sl=None)
    register(broker, rig.cluster, ticket, sl="1.09000")
    clock, alerts = FakeClock(), []
    m = manager(broker, EpochFencing(rig.cluster, epoch), prices, TrailRules(), clock, alerts, naked_policy=policy)
    assert m.run_once().failed == 1 and venue_sl(broker, ticket) is None
    clock.advance(999)
    assert m.run_once().closed == 0  # within the deadline (the circuit is open: no call either)
    clock.advance(1)
    report = m.run_once()
    assert [a[:2] for a in alerts] == [("position_without_stop", "critical")]
    open_now = [p.ticket for p in broker.positions()]
    if policy == "close":
        assert report.closed == 1 and ticket not in open_now
        assert journal_kinds(broker, rig.cluster, ticket)[-1] == "close"
        assert row_of(broker, rig.cluster, ticket).closed_at is not None
    else:
        assert report.closed == 0 and ticket in open_now


def test_a_close_the_database_cannot_take_is_kept_in_the_fallback_file_and_replayed(
    rig: Rig,  # noqa: F811
    prices: Prices,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    failing = OrderResult(Outcome.REJECTED, detail="venue down", refusal=Refusal.OTHER)
    broker = scripted(rig, prices, *[failing] * 10)
    ticket = open_buy(broker, epoch, "HXFALLBK", sl=None)
    register(broker, rig.cluster, ticket, sl="1.09000")
    clock, fb = FakeClock(), tmp_path / "fallback.jsonl"
    m = manager(broker, EpochFencing(rig.cluster, epoch), prices, TrailRules(), clock, [], fallback_path=fb)
    m.run_once()
    clock.advance(1000)  # past the stop deadline: the naked position is closed at the venue
    real_close, calls = store.close, []

    def database_away(*args: object, **kwargs: object) -> bool:
        calls.append(args)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(store, "close", database_away)
    before = m.metrics.journal_fallbacks._value.get()
    assert m.run_once().closed == 1 and ticket not in [p.ticket for p in broker.positions()]
    assert len(calls) == 3  # tried 3 times, then kept
    assert m.metrics.journal_fallbacks._value.get() == before + 1
    assert [f["ticket"] for f in Fallback(fb).pending()] == [ticket]
    assert "close" not in journal_kinds(broker, rig.cluster, ticket)
    monkeypatch.setattr(store, "close", real_close)  # the database is back
    m.run_once()
    assert journal_kinds(broker, rig.cluster, ticket)[-1] == "close" and Fallback(fb).pending() == []
    assert row_of(broker, rig.cluster, ticket).closed_at is not None


def test_trailing_sends_only_the_difference_and_a_new_leader_resumes_from_the_stored_state(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = open_buy(paper, epoch, "HXTRAIL1", sl="1.09000")
    register(paper, rig.cluster, ticket)
    first = manager(paper, EpochFencing(rig.cluster, epoch), prices, TrailRules())
    assert first.run_once().sent == 1  # 1.10000 - 0.00500
    assert venue_sl(paper, ticket) == D("1.09500")
    prices.set("EURUSD", "1.10300")
    assert first.run_once().sent == 1 and venue_sl(paper, ticket) == D("1.09800")
    prices.set("EURUSD", "1.10100")  # back down: a stop never loosens, nothing to send
    assert first.run_once().sent == 0 and venue_sl(paper, ticket) == D("1.09800")
    assert journal_kinds(paper, rig.cluster, ticket) == ["registered", "trailing", "trailing"]
    # another writer's change reaches the manager's cached book: unregistered, registered again
    registrar = Registrar(paper._pool, paper, rig.cluster, "paper", "leader", {}, canonical=lambda obj: dict(obj))
    assert registrar.unregister(ticket, "test:operator") and first.run_once().positions == 0
    assert (
        registrar.register({"ticket": ticket, "manage": {"t": 2}}, "test:operator")[1]
        and first.run_once().positions == 1
    )
    assert first._book[ticket].rules == {"t": 2}
    row = row_of(paper, rig.cluster, ticket)
    assert row.high_water == D("1.10300") and row.trailing_mode_enabled and row.verified_sl == D("1.09800")

    # a new leader (another epoch): its first loop decides from the stored high-water mark
    new_epoch = lead(rig.pool, rig.cluster, "other")
    trail = TrailRules()
    second = manager(paper, EpochFencing(rig.cluster, new_epoch), prices, trail)
    prices.set("EURUSD", "1.10200")
    assert second.run_once().sent == 0  # 1.10300 is still the best: the stop stays 1.09800
    assert trail.states_seen[0].high_water == D("1.10300")
    with pytest.raises(EpochSuperseded):  # the old leader can no longer write or modify
        prices.set("EURUSD", "1.10600")
        first.run_once()
    assert venue_sl(paper, ticket) == D("1.09800")


def test_the_fail_safe_refusal_is_counted_and_journalled_never_sent(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = open_buy(paper, epoch, "HXREFUSE", sl="1.09000")
    register(paper, rig.cluster, ticket)
    m = manager(paper, EpochFencing(rig.cluster, epoch), prices, TrailRules(refuse_beyond=D("1.09200")))
    assert m.run_once().sent == 0 and m.run_once().sent == 0
    assert venue_sl(paper, ticket) == D("1.09000")
    assert m.metrics.sl_updates.labels("refused")._value.get() == 2
    assert journal_kinds(paper, rig.cluster, ticket) == ["registered", "refused"]  # once per refused stop


def test_each_venue_answer_is_handled_by_its_meaning(rig: Rig, prices: Prices) -> None:  # noqa: F811
    epoch = lead(rig.pool, rig.cluster, "leader")
    frozen = OrderResult(Outcome.REJECTED, detail="frozen", refusal=Refusal.FROZEN)
    invalid = OrderResult(Outcome.REJECTED, detail="stops level", refusal=Refusal.INVALID_STOPS)
    broker = scripted(rig, prices, frozen)
    ticket = open_buy(broker, epoch, "HXANSWER", sl="1.09000")
    register(broker, rig.cluster, ticket)
    clock = FakeClock()
    m = manager(broker, EpochFencing(rig.cluster, epoch), prices, TrailRules(), clock)

    deferred = m.run_once()  # frozen: deferred, the breaker stays closed
    assert deferred.deferred == 1 and m._sender.open_circuits() == 0
    clock.advance(1000)
    # invalid stops: clamped to the stops level (10 points from the bid) and retried once
    prices.set("EURUSD", "1.09600")
    m._rules = replace(m._rules, decide=TrailRules(distance=D("0.00002")).decide)
    broker.answers = [invalid]
    assert m.run_once().verified == 1 and venue_sl(broker, ticket) == D("1.09590")
    clock.advance(1000)
    # other: a failure; the circuit opens and the position is skipped before any call
    broker.answers = [OrderResult(Outcome.REJECTED, detail="no", refusal=Refusal.OTHER)]
    prices.set("EURUSD", "1.09700")
    calls = broker.calls
    assert m.run_once().failed == 1 and m._sender.open_circuits() == 1
    assert m.run_once().sent == 0 and broker.calls == calls + 1
    clock.advance(5000)  # the cool-off: half-open, one trial, which succeeds
    assert m.run_once().verified == 1 and m._sender.open_circuits() == 0
    # gone: the venue closed it; the next loop records the close from the venue's deal
    assert broker.close_position(ticket, epoch).outcome is Outcome.DONE
    assert m.run_once().closed == 1
    assert journal_kinds(broker, rig.cluster, ticket)[-1] == "close"


def test_recovery_adopts_haexecs_positions_reports_foreign_ones_and_holds_a_vanished_one(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    _fp, tag, _sid = submit(rig, 1)
    ours = open_buy(paper, epoch, tag, sl="1.09000")
    foreign = open_buy(paper, epoch, "SOMEONEELSE", sl="1.09000")
    alerts: list[tuple[str, str, str]] = []
    m = manager(paper, EpochFencing(rig.cluster, epoch), prices, TrailRules(), alerts=alerts)
    report = m.run_once()
    assert report.adopted == 1 and report.positions == 1
    assert journal_kinds(paper, rig.cluster, ours) == ["adopted", "trailing"]
    assert journal_kinds(paper, rig.cluster, foreign) == []
    assert row_of(paper, rig.cluster, ours).source == "signal"
    # in the book, gone from the venue with no deal (its rows removed by hand): held, alerted
    with paper._pool.connection() as conn:
        conn.execute("DELETE FROM paper_deals WHERE ticket = %s", (int(ours),))
        conn.execute("UPDATE paper_positions SET closed_at = clock_timestamp() WHERE ticket = %s", (int(ours),))
    m.run_once()
    assert "EURUSD" in m.held_symbols and [a[0] for a in alerts] == ["position_vanished"]
    assert row_of(paper, rig.cluster, ours).closed_at is None
    found = survey(rig.pool, paper, rig.cluster, "paper")  # what `haexec reconcile` reports
    assert (found.vanished, found.foreign, found.ok) == ([ours], [foreign], False)


def test_with_the_real_rules_a_registered_trailing_stop_activates_and_follows(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = open_buy(paper, epoch, "HXREAL1", sl="1.09000")
    registrar = Registrar(paper._pool, paper, rig.cluster, "paper", "leader", {})
    manage = {"trailing": {"distance_points": 150, "activation_rr": 1}, "lock": [[0.5, 0.2]]}
    row, created = registrar.register({"ticket": ticket, "manage": manage}, "test:operator")
    assert created and row.rules["trailing"]["distance_points"] == "150" and row.trailing_activation_rr == 1
    m = PositionManager(
        ManagerConfig(rig.cluster, "leader", "paper", max_in_flight=3),
        EpochFencing(rig.cluster, epoch),
        rig.pool,
        paper,
        prices,
        RiskLimits(),
        metrics=PositionMetrics(CollectorRegistry()),
    )
    m.start()  # the thread: its first loop, then stopped
    try:
        prices.set("EURUSD", "1.10600")  # +0.6 R: the lock moves the stop to +0.2 R
        wait_for(lambda: venue_sl(paper, ticket) == D("1.10200"), 5, "the profit lock at the venue")
        prices.set("EURUSD", "1.11000")  # +1 R: trailing 150 points behind
        wait_for(lambda: venue_sl(paper, ticket) == D("1.10850"), 5, "the trailing stop at the venue")
    finally:
        m.stop(timeout_s=2)
    assert not m.alive
    kinds = journal_kinds(paper, rig.cluster, ticket)
    assert kinds[0] == "registered" and "lock" in kinds and kinds[-1] == "trailing"
    stored = row_of(paper, rig.cluster, ticket)
    assert stored.trailing_mode_enabled and stored.verified_sl == D("1.10850")


def test_64_concurrent_identical_registrations_make_one_row(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = open_buy(paper, epoch, "HXCONC", sl="1.09000")
    pool = make_pool(rig.pool.conninfo, SessionLimits(5000, "test-reg"), name="test-reg", min_size=8, max_size=16)
    pool.open(wait=True, timeout=10)
    registrar = Registrar(pool, paper, rig.cluster, "paper", "leader", {})
    body = {"ticket": ticket, "manage": {"breakeven": {"at_rr": 1}}}
    start = threading.Barrier(64)

    def one(_: int) -> bool:
        start.wait(10)
        return registrar.register(body, "test:operator")[1]

    try:
        with ThreadPoolExecutor(64) as workers:
            created = list(workers.map(one, range(64)))
        assert created.count(True) == 1
        with pytest.raises(store.Registered):  # the same ticket with other rules
            registrar.register({"ticket": ticket, "manage": {"breakeven": {"at_rr": 2}}}, "test:operator")
        with pytest.raises(RegistrationError) as bad:
            registrar.register({"ticket": ticket, "manage": {"breakeven": {"at_rr": "x"}}, "extra": 1}, "test:operator")
        assert set(bad.value.errors) == {"manage.breakeven.at_rr", "extra"}
        with pytest.raises(NoSuchPosition):
            registrar.register({"ticket": "424242"}, "test:operator")
        assert registrar.unregister(ticket, "test:operator") and not registrar.unregister(ticket, "test:operator")
        # One registration and one unregistration happened: the audit has one entry of each.
        with pool.connection() as conn:
            actions = [(e.action, e.actor) for e in audit.latest(conn, rig.cluster, 10)]
            assert audit.verify(conn, rig.cluster).broken_id is None
        assert actions == [("unregister", "test:operator"), ("register", "test:operator")]
        assert venue_sl(paper, ticket) == D("1.09000")  # the stop stays
    finally:
        pool.close()
    with rig.pool.connection() as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM plan_execution_state WHERE cluster = %s AND ticket = %s", (rig.cluster, ticket)
            ).fetchone()[0]
            == 1
        )
    assert journal_kinds(paper, rig.cluster, ticket) == ["registered", "unregistered"]


def test_a_paper_booking_wakes_the_manager_and_its_own_stop_changes_do_not(
    rig: Rig,  # noqa: F811
    paper: PaperBroker,
    database_url: str,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    wakes: list[int] = []
    listener = BookListener(database_url, rig.cluster, "leader", lambda: wakes.append(1))
    listener.start()
    try:
        wait_for(lambda: wakes, 5, "the wake-up on listening")  # for anything booked meanwhile
        ticket = open_buy(paper, epoch, "HXWAKE1", sl="1.09000")
        wait_for(lambda: len(wakes) == 2, 5, "the wake-up on a booking")
        # A stop change notifies too (a position update), before the next booking does, in
        # commit order: only the booking wakes the manager.
        assert paper.modify(ticket, D("1.09500"), None, epoch).outcome is Outcome.DONE
        open_buy(paper, epoch, "HXWAKE2", sl="1.09000")
        wait_for(lambda: len(wakes) >= 3, 5, "the wake-up on the second booking")
        assert len(wakes) == 3
    finally:
        listener.stop()
