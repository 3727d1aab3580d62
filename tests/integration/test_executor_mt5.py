"""The leader's executor at MetaTrader 5, through the fake `MetaTrader5` module with realistic
symbol specs (EURUSD, XAUUSD, an EUR index), on real Redis and PostgreSQL: risk sized at the
venue's spec and executable price, expiry on the NOTIFY path, the kill switch between sends,
pending orders as exposure, a database error mid-batch, and alerts only for changes that applied."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import store
from engine.breaker import CircuitBreaker
from engine.brokers.base import OrderRequest, OrderResult, Outcome, VenueOrder
from engine.brokers.mt5 import MT5Broker
from engine.duplicates import DuplicateGuard
from engine.executor import Executor, ExecutorConfig
from engine.model import Side
from engine.risk import RiskLimits
from tests.fakes import MetaTrader5 as fake_mt5
from tests.fakes.MetaTrader5 import FakeTerminal
from tests.integration import test_executor
from tests.integration.test_executor import Rig, submit
from tests.support import wait_for

MAGIC = 4343
rig = test_executor.rig  # the fixture: real Redis and PostgreSQL, a coordinator not yet started


@dataclass
class Alerts:
    sent: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, kind: str, severity: str, message: str, **_: Any) -> None:
        self.sent.append((kind, message))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]


@pytest.fixture
def fake() -> Iterator[FakeTerminal]:
    t = fake_mt5.reset()
    yield t
    t.release()


@pytest.fixture
def mt5(fake: FakeTerminal) -> Iterator[MT5Broker]:
    b = MT5Broker(
        fake.login,
        fake.password,
        fake.server,
        None,
        MAGIC,
        500,
        module=fake_mt5,
        connect_backoff_s=0,
        requote_backoff_s=0,
    )
    b.connect()
    yield b
    b.wait_idle(2.0)
    b.close()


@pytest.fixture
def leading(rig: Rig) -> Rig:
    rig.coordinator.start()
    wait_for(rig.coordinator.elector.is_leader, 10, "leadership")
    return rig


@contextmanager
def executing(
    rig: Rig, database_url: str, broker: Any, alerts: Alerts | None = None, sweep_ms: int = 100, **limits: Any
) -> Iterator[Executor]:
    ex = Executor(
        ExecutorConfig(
            cluster=rig.cluster, instance_id="leader", broker_deadline_ms=500, drift_margin_ms=50, sweep_ms=sweep_ms
        ),
        rig.coordinator,
        rig.pool,
        database_url,
        broker,
        CircuitBreaker(broker="mt5"),
        RiskLimits(**limits),
        alert=alerts or Alerts(),
    )
    ex.start()
    try:
        yield ex
    finally:
        ex.stop(5)


def settle(rig: Rig, database_url: str, broker: Any, *fps: str, alerts: Alerts | None = None, **limits: Any) -> None:
    """Run an executor until every one of `fps` is settled."""
    with executing(rig, database_url, broker, alerts, **limits):
        wait_for(settled(rig, *fps), 10, "settled")


def signal(rig: Rig, i: int, **fields: Any) -> tuple[str, str, int]:
    base: dict[str, Any] = {"symbol": "EURUSD", "price": "1.1001", "sl": "1.0991", "risk_pct": "1", "volume": None}
    base.update(fields)
    if fields.get("volume") is not None:
        base["risk_pct"] = None
    return submit(rig, i, **base)


def row(rig: Rig, fp: str) -> tuple[str, str | None, Decimal | None]:
    with rig.pool.connection() as conn:
        got = conn.execute(
            "SELECT status, error, volume FROM signals WHERE cluster = %s AND fingerprint = %s", (rig.cluster, fp)
        ).fetchone()
    assert got is not None
    return got[0], got[1], got[2]


def settled(rig: Rig, *fps: str) -> Callable[[], bool]:
    return lambda: all(row(rig, fp)[0] not in ("received", "executing") for fp in fps)


def loss_at_stop(fake: FakeTerminal, request: dict[str, Any]) -> Decimal:
    """The account currency a sent order loses at its stop, from the price it went at."""
    s = fake.symbols[request["symbol"]]
    distance = abs(Decimal(repr(request["price"])) - Decimal(repr(request["sl"])))
    ticks = distance / Decimal(repr(s["tick_size"]))
    return ticks * Decimal(repr(s["tick_value_loss"])) * Decimal(repr(request["volume"]))


# ---- risk at the venue's spec and price ----


@pytest.mark.parametrize(
    ("symbol", "price", "sl", "volume"),
    [
        ("EURUSD", "1.1001", "1.0991", 0.95),  # 95 USD / (100 ticks x 1 USD): not 100 lots
        ("XAUUSD", "2400.40", "2390.40", 0.09),  # 95 / (1000 ticks x 1 USD) = 0.095
        ("GER40", "18001.0", "17951.0", 1.7),  # 95 / (500 ticks x 0.108 USD) = 1.759, step 0.1
    ],
)
def test_risk_is_sized_with_the_venue_spec(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker, symbol: str, price: str, sl: str, volume: float
) -> None:
    fp, _, _ = signal(leading, 1, symbol=symbol, price=price, sl=sl)
    settle(leading, database_url, mt5, fp)
    assert row(leading, fp)[0] == "executed", row(leading, fp)
    [sent] = fake.requests
    assert sent["volume"] == volume
    assert loss_at_stop(fake, sent) <= Decimal(200)  # the 2 % cap of 10 000


@pytest.mark.parametrize(
    ("fields", "market", "rule"),
    [
        ({"price": "1.00010", "sl": "1.00000"}, None, "price_tolerance"),  # the market is at 1.1001
        ({"symbol": "NOPE"}, None, "symbol_spec"),  # the venue has no such symbol
        ({}, (1.0985, 1.0986), "stop_side"),  # the market fell through the buy's stop 1.0991
    ],
)
def test_a_signal_the_venue_cannot_take_as_given_is_refused(
    leading: Rig,
    database_url: str,
    fake: FakeTerminal,
    mt5: MT5Broker,
    fields: dict[str, str],
    market: tuple[float, float] | None,
    rule: str,
) -> None:
    if market is not None:
        fake.set_tick("EURUSD", *market)
    fp, _, _ = signal(leading, 1, **fields)
    settle(leading, database_url, mt5, fp)
    status, error, _ = row(leading, fp)
    assert status == "rejected" and error is not None and error.startswith(f"risk {rule}:"), error
    assert fake.requests == []


SPECS = st.fixed_dictionaries(
    {
        "digits": st.sampled_from([1, 2, 3, 5]),
        "contract_size": st.sampled_from([1.0, 10.0, 100.0, 100_000.0]),
        "tick_value": st.sampled_from([0.01, 0.108, 1.0, 1.27, 10.0]),
        "volume_step": st.sampled_from([0.01, 0.1, 1.0]),
    }
)
IDS = itertools.count(1000)


@pytest.fixture
def running(leading: Rig, database_url: str, mt5: MT5Broker) -> Iterator[Executor]:
    with executing(leading, database_url, mt5, max_open_positions=100_000) as ex:
        yield ex


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    spec=SPECS,
    mid=st.integers(100, 10_000_000),
    stop_ticks=st.integers(1, 50_000),
    equity=st.integers(1_000, 10_000_000),
    risk_pct=st.sampled_from(["0.5", "1", "2", "5"]),
    steps=st.one_of(st.none(), st.integers(1, 2000)),  # an explicit volume, in volume steps
    sell=st.booleans(),
)
def test_property_no_order_sent_risks_more_than_the_cap(
    leading: Rig,
    fake: FakeTerminal,
    running: Executor,
    spec: dict[str, Any],
    mid: int,
    stop_ticks: int,
    equity: int,
    risk_pct: str,
    steps: int | None,
    sell: bool,
) -> None:
    """Random specs, prices, stops and equity: every order that reaches order_send loses at
    most 2 % of equity at its stop, in account currency at the price it went at."""
    fake.balance = fake.equity = float(equity)
    point = Decimal(1).scaleb(-spec["digits"])
    bid = Decimal(mid) * point
    ask = bid + point * 2
    name = f"R{next(IDS)}"
    extra = {k: v for k, v in spec.items() if k != "digits"}
    fake.add_symbol(
        name, bid=float(bid), ask=float(ask), digits=spec["digits"], volume_min=spec["volume_step"], **extra
    )
    price = bid if sell else ask
    sl = price + point * stop_ticks if sell else price - point * stop_ticks
    if sl <= 0:
        return
    fake.requests.clear()
    side = "sell" if sell else "buy"
    volume = None if steps is None else str(Decimal(repr(spec["volume_step"])) * steps)
    fp, _, _ = signal(
        leading, next(IDS), symbol=name, side=side, price=str(price), sl=str(sl), risk_pct=risk_pct, volume=volume
    )
    wait_for(settled(leading, fp), 10, "settled")
    cap = Decimal(equity) * 2 / 100
    for sent in fake.requests:
        assert loss_at_stop(fake, sent) <= cap, (sent, cap)


# ---- expiry, the kill switch, exposure ----


def test_signals_already_expired_are_never_sent_when_a_notify_claims_them(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker
) -> None:
    alerts = Alerts()
    first, _, _ = signal(leading, 1)
    with executing(leading, database_url, mt5, alerts, sweep_ms=60_000):  # no timer: only NOTIFY claims
        wait_for(settled(leading, first), 10, "the first signal")  # office taken, housekeeping done
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        late = [signal(leading, 10 + i, expires_at=past)[0] for i in range(10)]
        wait_for(settled(leading, *late), 10, "the expired signals settled")
    assert [row(leading, fp)[0] for fp in late] == ["expired"] * 10
    assert len(fake.requests) == 1
    assert alerts.kinds().count("signal_expired") == 10


class Wrapped:
    """The MT5 broker with a hook after (or instead of) each send."""

    def __init__(self, inner: MT5Broker, after_send: Callable[[OrderRequest, OrderResult], OrderResult]) -> None:
        self._inner = inner
        self._after = after_send
        self.sends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def send(self, req: OrderRequest) -> OrderResult:
        self.sends += 1
        return self._after(req, self._inner.send(req))


def test_a_halt_after_the_first_send_stops_the_rest_of_the_batch(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker
) -> None:
    fps = [signal(leading, i)[0] for i in range(5)]

    def halt(req: OrderRequest, result: OrderResult) -> OrderResult:
        with leading.pool.connection() as conn:
            conn.execute(
                "INSERT INTO controls (cluster, halted, reason) VALUES (%s, true, 'test')"
                " ON CONFLICT (cluster) DO UPDATE SET halted = true",
                (leading.cluster,),
            )
        return result

    settle(leading, database_url, Wrapped(mt5, halt), *fps)
    statuses = [row(leading, fp) for fp in fps]
    assert [s for s, _, _ in statuses] == ["executed"] + ["rejected"] * 4
    assert all("halted" in (e or "") for _, e, _ in statuses[1:])
    assert len(fake.requests) == 1


def test_pending_orders_count_as_open_exposure(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker
) -> None:
    fake.add_order(symbol="EURUSD", type=fake_mt5.ORDER_TYPE_BUY_LIMIT, price_open=1.05)  # someone else's
    limit = {"type": "limit", "price": "1.0950", "sl": "1.0900"}
    fps = [signal(leading, i, **limit)[0] for i in range(3)]
    settle(leading, database_url, mt5, *fps, max_open_positions=3)
    statuses = [row(leading, fp) for fp in fps]
    assert [s for s, _, _ in statuses] == ["executed", "executed", "rejected"]
    assert (statuses[2][1] or "").startswith("risk max_open_positions: 3 positions and pending orders open")
    assert len(fake.orders) == 3


# ---- a database error mid-batch; alerts only for changes that applied ----


def test_a_database_error_after_one_send_hands_back_the_rest_and_records_the_sent_one(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    fps = [signal(leading, i)[0] for i in range(3)]
    real = store.record_outcomes
    calls = itertools.count()

    def fails_once(*args: Any, **kwargs: Any) -> dict[int, float]:
        if next(calls) == 0:
            raise psycopg.OperationalError("connection lost (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "record_outcomes", fails_once)
    alerts = Alerts()
    settle(leading, database_url, mt5, *fps, alerts=alerts)
    assert [row(leading, fp)[0] for fp in fps] == ["executed"] * 3
    assert len(fake.requests) == 3  # each once: the sent one recorded, the others sent after the hand-back
    assert "signal_in_doubt" not in alerts.kinds()
    with leading.pool.connection() as conn:
        details = [r[0] for r in conn.execute("SELECT detail FROM signal_events ORDER BY id")]
    assert details.count("handed back after a database error; never sent") == 2


def test_an_outcome_whose_status_change_did_not_apply_raises_no_alert(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker
) -> None:
    """A deposed leader's unknown answer for a signal the new leader already took over: the
    fact is kept, but nothing is alerted, counted or held."""
    fp, tag, sid = signal(leading, 1)

    def taken_over_meanwhile(req: OrderRequest, result: OrderResult) -> OrderResult:
        with leading.pool.connection() as conn:
            conn.execute("UPDATE signals SET epoch = epoch + 1 WHERE id = %s", (sid,))
        return OrderResult(Outcome.UNKNOWN, detail="order_send returned None (injected)")

    alerts = Alerts()
    with executing(leading, database_url, Wrapped(mt5, taken_over_meanwhile), alerts):
        wait_for(lambda: fact_count(leading, sid) == 1, 10, "the fact recorded")
    assert alerts.kinds() == []
    assert row(leading, fp)[0] == "executing"  # the newer attempt's to settle


def fact_count(rig: Rig, sid: int) -> int:
    with rig.pool.connection() as conn:
        got = conn.execute("SELECT count(*) FROM executions WHERE signal = %s", (sid,)).fetchone()
    return int(got[0]) if got else 0


# ---- duplicates: found after settlement, removed or closed, escalated while open ----


def executed(rig: Rig, fp: str) -> Callable[[], bool]:
    return lambda: row(rig, fp)[0] == "executed"


def ours(fake: FakeTerminal, tag: str) -> list[Any]:
    return [x for x in fake.positions + fake.orders if x.magic == MAGIC and x.comment == tag]


@pytest.mark.parametrize("kind", ["position", "pending"])
def test_a_late_duplicate_after_settlement_is_found_and_undone(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker, kind: str
) -> None:
    limit = {"type": "limit", "price": "1.0950", "sl": "1.0900"} if kind == "pending" else {}
    fp, tag, _ = signal(leading, 1, **limit)
    alerts = Alerts()
    with executing(leading, database_url, mt5, alerts):
        wait_for(executed(leading, fp), 10, "executed")
        [kept] = ours(fake, tag)
        # a paused ex-leader's send of the same signal lands now, after the signal was settled
        if kind == "pending":
            fake.add_order(magic=MAGIC, comment=tag, symbol="EURUSD", type=fake_mt5.ORDER_TYPE_BUY_LIMIT)
        else:
            fake.add_position(magic=MAGIC, comment=tag, symbol="EURUSD", price_open=1.1001)
        wait_for(lambda: len(ours(fake, tag)) == 1, 10, "the duplicate undone")
    assert ours(fake, tag) == [kept]
    verb = "removed" if kind == "pending" else "closed"
    [(kind_sent, message)] = alerts.sent
    assert kind_sent == "duplicate_order" and f"; {verb} " in message
    if kind == "pending":
        assert fake.requests[-1]["action"] == fake_mt5.TRADE_ACTION_REMOVE


def test_a_duplicate_that_cannot_be_closed_is_retried_and_escalated(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker
) -> None:
    fp, tag, _ = signal(leading, 1)
    alerts = Alerts()
    with executing(leading, database_url, mt5, alerts):
        wait_for(executed(leading, fp), 10, "executed")
        fake.script(fake_mt5.TRADE_RETCODE_REJECT, fake_mt5.TRADE_RETCODE_REJECT, fake_mt5.TRADE_RETCODE_REJECT)
        fake.add_position(magic=MAGIC, comment=tag, symbol="EURUSD", price_open=1.1001)
        wait_for(lambda: len(ours(fake, tag)) == 1, 10, "closed at the fourth attempt")
    kinds = alerts.kinds()
    assert kinds == ["duplicate_order_open", "duplicate_order_open", "duplicate_order"]  # attempts 1, 2, then done
    assert "STILL OPEN after 1 attempt(s)" in alerts.sent[0][1] and "REJECT" in alerts.sent[0][1]


def test_a_deposed_leader_never_compensates(fake: FakeTerminal, mt5: MT5Broker) -> None:
    dupe = fake.add_position(magic=MAGIC, comment="hxT", symbol="EURUSD")
    alerts = Alerts()
    guard = DuplicateGuard("c", None, mt5, alerts, lambda epoch: False)  # type: ignore[arg-type]
    venue = VenueOrder(str(dupe.ticket), "hxT", "EURUSD", Side.BUY, Decimal("0.1"), Decimal("1.1"), "position")
    guard.compensate("fp", "1", venue, 7)
    assert fake.requests == [] and alerts.sent == []
    assert fake.positions == [dupe]


def test_each_attempt_is_stamped_at_its_own_send(
    leading: Rig, database_url: str, fake: FakeTerminal, mt5: MT5Broker
) -> None:
    """The in-doubt grace counts from a signal's own send, not from its batch's claim: the
    attempt is stamped just before each order goes."""
    fps = [signal(leading, i)[0] for i in range(3)]
    stamps: list[tuple[str, float]] = []

    def record(req: OrderRequest, result: OrderResult) -> OrderResult:
        with leading.pool.connection() as conn:
            row = conn.execute(
                "SELECT extract(epoch from attempt_at), extract(epoch from (SELECT min(at) FROM signal_events e"
                " WHERE e.signal = s.id AND e.detail = 'claimed')) FROM signals s WHERE cluster = %s AND tag = %s",
                (leading.cluster, req.tag),
            ).fetchone()
        assert row is not None
        stamps.append((req.tag, float(row[0]) - float(row[1])))
        return result

    settle(leading, database_url, Wrapped(mt5, record), *fps)
    assert len(stamps) == 3
    assert all(after_claim > 0 for _, after_claim in stamps), stamps  # stamped after the claim, at the send
    assert stamps[0][1] < stamps[1][1] < stamps[2][1]  # each later than the one before
