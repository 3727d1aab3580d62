"""The position manager at MetaTrader 5, through the fake `MetaTrader5` module, on real
PostgreSQL, with stand-in rules (tests/positions_support.py): a stop the venue dropped set
with one TRADE_ACTION_SLTP that keeps the take profit, a trail sent only as it changes, a
position the trade server closed at its stop recorded from its exit deal (not held as
vanished, which would stop new trading on the symbol after every stop-out), each answer of
the terminal by its meaning, a netting add-on that cleared the stop, an SLTP call that hangs,
and the real rules' partial close."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from common.clock import FakeClock
from engine.brokers.base import OrderRequest, Outcome
from engine.brokers.mt5 import MT5Broker, TerminalBusy
from engine.model import OrderType, Side
from engine.positions import store
from engine.positions.manager import ManagerConfig, PositionManager
from engine.positions.metrics import PositionMetrics
from engine.positions.recovery import survey
from engine.positions.registration import Registrar
from engine.risk import RiskLimits
from tests.fakes import MetaTrader5 as fake_mt5
from tests.fakes.MetaTrader5 import FakeTerminal
from tests.integration.test_executor import Rig, rig  # noqa: F401 (rig is a fixture)
from tests.integration.test_paper import lead
from tests.positions_support import D, EpochFencing, Prices, TrailRules

MAGIC = 4545
ACCOUNT = "mt5"
TAG = "hxPOSITIONSMT5TEST"


@pytest.fixture
def fake() -> Iterator[FakeTerminal]:
    t = fake_mt5.reset()
    yield t
    t.release()


MODIFY_DEADLINE_MS = 150  # the hung-call test waits it out; every other call has 5 s


@pytest.fixture
def mt5(fake: FakeTerminal) -> Iterator[MT5Broker]:
    b = MT5Broker(
        fake.login,
        fake.password,
        fake.server,
        None,
        MAGIC,
        5_000,
        module=fake_mt5,
        connect_backoff_s=0,
        modify_deadline_ms=MODIFY_DEADLINE_MS,
    )
    b.connect()
    yield b
    fake.release()
    b.wait_idle(2.0)
    b.close()


@pytest.fixture
def prices() -> Prices:
    p = Prices()
    p.set("EURUSD", "1.10000")  # the fake's EURUSD: bid 1.10000, ask 1.10010
    return p


def move(fake: FakeTerminal, prices: Prices, bid: str) -> None:
    """The market moves, at the terminal and in the manager's feed alike."""
    prices.set("EURUSD", bid)
    fake.set_tick("EURUSD", float(bid), float(D(bid) + D("0.00010")))


def bought(fake: FakeTerminal, mt5: MT5Broker, epoch: int, tp: str | None = None) -> str:
    """A bought 0.10 lot, its stop at 1.09: its ticket."""
    sent = mt5.send(
        OrderRequest(
            TAG, "EURUSD", Side.BUY, OrderType.MARKET, D("0.10"), D("1.1001"), D("1.09"), D(tp) if tp else None, epoch
        )
    )
    assert sent.outcome is Outcome.DONE
    return str(fake.positions[-1].ticket)


def opened_without_stop(fake: FakeTerminal, mt5: MT5Broker, epoch: int) -> str:
    """A bought 0.10 lot whose stop the broker dropped (market execution), its take profit kept."""
    ticket = bought(fake, mt5, epoch, tp="1.12")
    i = next(i for i, p in enumerate(fake.positions) if str(p.ticket) == ticket)
    fake.positions[i] = fake.positions[i]._replace(sl=0.0)
    return ticket


def register(rig: Rig, mt5: MT5Broker, ticket: str, manage: dict | None = None, sl: str | None = None) -> None:  # noqa: F811
    """Registered for management: under the real rules with `manage`, else the stand-in's."""
    if manage is None:
        registrar = Registrar(rig.pool, mt5, rig.cluster, ACCOUNT, "leader", {}, canonical=lambda obj: dict(obj))
        manage = {"t": 1}
    else:
        registrar = Registrar(rig.pool, mt5, rig.cluster, ACCOUNT, "leader", {})
    _, created = registrar.register({"ticket": ticket, "manage": manage, **({"sl": sl} if sl else {})}, "test:operator")
    assert created


def registered(rig: Rig, fake: FakeTerminal, mt5: MT5Broker, epoch: int) -> str:  # noqa: F811
    """A bought 0.10 lot with its stop at 1.09, registered; the trail (0.005 behind) wants 1.095."""
    ticket = bought(fake, mt5, epoch)
    register(rig, mt5, ticket)
    return ticket


def manager(
    rig: Rig,  # noqa: F811
    mt5: MT5Broker,
    epoch: int,
    prices: Prices,
    alerts: list,
    clock: FakeClock | None = None,
    real_rules: bool = False,
) -> PositionManager:
    return PositionManager(
        ManagerConfig(rig.cluster, "leader", ACCOUNT, max_in_flight=1),
        EpochFencing(rig.cluster, epoch),
        rig.pool,
        mt5,
        prices,  # type: ignore[arg-type]
        RiskLimits(),
        alert=lambda kind, severity, message, **f: alerts.append((kind, severity, message)),
        rules_api=None if real_rules else TrailRules(distance=D("0.00500")).api(),
        clock=clock or FakeClock(),
        metrics=PositionMetrics(CollectorRegistry()),
    )


def journal(rig: Rig, ticket: str) -> list[str]:  # noqa: F811
    with rig.pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind FROM trade_journal WHERE cluster = %s AND ticket = %s ORDER BY id", (rig.cluster, ticket)
        ).fetchall()
    return [r[0] for r in rows]


def sltp_requests(fake: FakeTerminal) -> list[dict]:
    return [r for r in fake.requests if r["action"] == fake_mt5.TRADE_ACTION_SLTP]


def test_the_manager_protects_trails_and_records_a_stop_out_at_mt5(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = opened_without_stop(fake, mt5, epoch)
    register(rig, mt5, ticket, sl="1.09000")
    alerts: list[tuple[str, str, str]] = []
    m = manager(rig, mt5, epoch, prices, alerts)

    report = m.run_once()  # the trail (1.09500) is above the stop it needs: that one goes
    assert (report.naked, report.sent, report.verified) == (1, 1, 1)
    [first] = sltp_requests(fake)
    assert (first["position"], first["sl"], first["tp"]) == (int(ticket), 1.095, 1.12)  # one atomic change, TP kept
    assert fake.positions[0].sl == 1.095
    assert m.run_once().sent == 0 and len(sltp_requests(fake)) == 1  # nothing differs: nothing sent

    move(fake, prices, "1.10300")
    assert m.run_once().sent == 1
    assert sltp_requests(fake)[-1]["sl"] == 1.098 and fake.positions[0].sl == 1.098

    fake.trigger(int(ticket))  # the trade server closes it at its stop
    report = m.run_once()
    assert report.closed == 1 and m.held_symbols == {} and alerts == []
    assert journal(rig, ticket)[-1] == "close"
    with rig.pool.connection() as conn:
        row = store.one(conn, rig.cluster, ACCOUNT, ticket)
        detail = conn.execute(
            "SELECT detail FROM trade_journal WHERE cluster = %s AND ticket = %s AND kind = 'close'",
            (rig.cluster, ticket),
        ).fetchone()
    assert row is not None and row.closed_at is not None
    assert detail is not None and detail[0]["by"] == "sl" and Decimal(detail[0]["price"]) == Decimal("1.098")
    found = survey(rig.pool, mt5, rig.cluster, ACCOUNT)  # what `haexec reconcile` reports now
    assert found.vanished == [] and found.ok


def test_a_deal_the_history_shows_late_lifts_only_its_own_hold(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    tickets = [registered(rig, fake, mt5, epoch) for _ in range(2)]
    alerts: list[tuple[str, str, str]] = []
    m = manager(rig, mt5, epoch, prices, alerts)
    m.run_once()
    first, second = tickets
    deals = [fake.trigger(int(t)) for t in tickets]
    lagging = list(fake.history_deals)
    fake.history_deals[:] = [d for d in lagging if d not in deals]  # the terminal has not synced them yet
    m.run_once()
    assert set(m.held_symbols) == {"EURUSD"} and [a[:2] for a in alerts] == [("position_vanished", "critical")] * 2
    fake.history_deals.append(deals[0])  # the first one's deal arrives
    assert m.run_once().closed == 1
    assert m.held_symbols == {"EURUSD": f"ticket {second} absent at the venue with no closing deal"}
    fake.history_deals.append(deals[1])
    assert m.run_once().closed == 1 and m.held_symbols == {}


def test_a_history_the_terminal_cannot_read_holds_one_position_and_protects_the_others(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    closed = registered(rig, fake, mt5, epoch)
    m = manager(rig, mt5, epoch, prices, [])
    m.run_once()
    fake.trigger(int(closed))
    naked = opened_without_stop(fake, mt5, epoch)
    register(rig, mt5, naked, sl="1.09000")
    fake.fail_next("history_deals_get")
    report = m.run_once()
    assert report.sent == 1 and fake.positions[0].sl == 1.095  # the naked one got its stop all the same
    assert "deals cannot be read" in m.held_symbols["EURUSD"]
    assert m.run_once().closed == 1 and m.held_symbols == {}


def test_the_rules_partial_close_at_mt5_takes_half_off_once(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = bought(fake, mt5, epoch)
    register(rig, mt5, ticket, manage={"partial": {"at_rr": 1, "fraction": 0.5}})
    m = manager(rig, mt5, epoch, prices, [], real_rules=True)
    m.run_once()
    move(fake, prices, "1.11100")  # past +1 R (entry 1.10010, stop 1.09)
    assert m.run_once().partials == 1
    [deal] = [r for r in fake.requests if r["action"] == fake_mt5.TRADE_ACTION_DEAL and r.get("position")]
    assert (deal["position"], deal["volume"]) == (int(ticket), 0.05)
    assert fake.positions[0].volume == 0.05 and fake.positions[0].sl == 1.09  # the rest keeps its stop
    m.run_once()
    assert len([r for r in fake.requests if r.get("position") and r["action"] == fake_mt5.TRADE_ACTION_DEAL]) == 1


def test_each_answer_of_the_terminal_is_handled_by_its_meaning(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    registered(rig, fake, mt5, epoch)
    clock = FakeClock()
    m = manager(rig, mt5, epoch, prices, [], clock)
    fake.script(fake_mt5.TRADE_RETCODE_FROZEN)
    report = m.run_once()  # frozen: deferred, the breaker stays closed
    assert report.deferred == 1 and m._sender.open_circuits() == 0 and fake.positions[0].sl == 1.09
    clock.advance(1000)
    # invalid stops, by the trade server's own check: a trail 2 points behind is inside the
    # 10-point stops level; clamped to the level and retried once, which it takes
    fake.symbols["EURUSD"]["stops_level"] = 10
    m._rules = replace(m._rules, decide=TrailRules(distance=D("0.00002")).decide)
    report = m.run_once()
    assert report.verified == 1 and fake.positions[0].sl == 1.0999
    assert [r["sl"] for r in sltp_requests(fake)[-2:]] == [1.09998, 1.0999]
    clock.advance(1000)
    m._rules = replace(m._rules, decide=TrailRules(distance=D("0.00500")).decide)
    move(fake, prices, "1.10600")
    fake.script(fake_mt5.TRADE_RETCODE_REJECT)  # other: a failure, the circuit opens
    assert m.run_once().failed == 1 and m._sender.open_circuits() == 1
    asked = len(sltp_requests(fake))
    assert m.run_once().sent == 0 and len(sltp_requests(fake)) == asked  # skipped before any call
    clock.advance(5000)  # the cool-off: half-open, one trial, which the terminal takes
    assert m.run_once().verified == 1 and fake.positions[0].sl == 1.101 and m._sender.open_circuits() == 0


def test_a_netting_add_on_that_clears_the_stop_gets_it_back_in_one_loop(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    fake.margin_mode = fake_mt5.ACCOUNT_MARGIN_MODE_RETAIL_NETTING
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = registered(rig, fake, mt5, epoch)
    m = manager(rig, mt5, epoch, prices, [])
    assert m.run_once().verified == 1 and fake.positions[0].sl == 1.095
    add_on = {"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0, "price": 1.1001, "sl": 0.0, "magic": 1}
    assert fake_mt5.order_send(add_on).retcode == fake_mt5.TRADE_RETCODE_DONE  # a manual add-on, no stop
    [merged] = fake.positions
    assert (str(merged.ticket), merged.volume, merged.sl) == (ticket, 0.2, 0.0)  # naked, twice the size
    report = m.run_once()
    assert (report.naked, report.sent, report.verified) == (1, 1, 1)
    assert fake.positions[0].sl == 1.095  # the database's verified stop, back at the venue
    # the venue's volume wins (partial), the stop was seen gone (naked) and set again
    assert journal(rig, ticket) == ["registered", "trailing", "partial", "naked", "stop_set"]
    with rig.pool.connection() as conn:
        row = store.one(conn, rig.cluster, ACCOUNT, ticket)
    assert row is not None and row.volume == D("0.2") and row.verified_sl == D("1.095")


def test_an_sltp_call_that_hangs_is_unknown_opens_the_circuit_and_nothing_queues_behind_it(
    rig: Rig,  # noqa: F811
    fake: FakeTerminal,
    mt5: MT5Broker,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = registered(rig, fake, mt5, epoch)
    clock = FakeClock()
    m = manager(rig, mt5, epoch, prices, [], clock)
    fake.hang("order_send", action=fake_mt5.TRADE_ACTION_SLTP)
    fake.script(fake_mt5.Reply(fake_mt5.TRADE_RETCODE_DONE))  # it does take effect, late
    report = m.run_once()  # the modify's deadline (150 ms) passes: unknown, a failure
    assert report.failed == 1 and m._sender.open_circuits() == 1
    assert fake.entered.is_set() and mt5.busy == "order_send"
    with pytest.raises(TerminalBusy):  # the next loop's read is refused at once: nothing queues behind it
        m.run_once()
    fake.release()
    assert fake.returned.wait(2.0) and mt5.wait_idle(2.0)
    clock.advance(5000)
    m.run_once()  # the late change is there: verified as the venue has it, nothing sent again
    assert fake.positions[0].sl == 1.095 and len(sltp_requests(fake)) == 1  # the hung one, and no other
    with rig.pool.connection() as conn:
        row = store.one(conn, rig.cluster, ACCOUNT, ticket)
    assert row is not None and row.verified_sl == D("1.095")
