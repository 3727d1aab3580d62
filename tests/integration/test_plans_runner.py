"""The leader's plan loop on real PostgreSQL over the sim: a plan that holds executes once,
one that does not keeps its reason vector, a bar close marks only the plans reading it,
expiry, recovery on becoming leader, and nothing done without the epoch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from db.session import SessionLimits, make_pool
from db.urls import libpq_url
from engine.market.base import Timeframe
from engine.market.sim import SimSource
from engine.plans import store
from engine.plans.conditions.base import Pattern, Reading, Snapshot, Truth
from engine.plans.metrics import PlanMetrics
from engine.plans.model import Leaf, Plan, parse_plan
from engine.plans.runner import Held, PlanRunner, RunnerConfig
from tests.market_support import MarketClock, market_over
from tests.plans_support import StaticFencing, set_leader
from tests.support import wait_for

T0 = 1_796_000_000_000  # a Thursday in 2026, 18:13 UTC
ORDER = {"symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01", "price": "1.1", "sl": "1.09"}


@dataclass
class Rig:
    cluster: str
    conn: psycopg.Connection
    runner: PlanRunner
    clock: MarketClock
    fencing: StaticFencing
    mono: list[float]  # the runner's monotonic clock, in ms

    def add(self, plan_id: str, **extra: Any) -> None:
        store.create(self.conn, self.cluster, "r1", plan_id, parse_plan({**ORDER, **extra})[1])

    def status(self, plan_id: str) -> str:
        row = store.show(self.conn, self.cluster, plan_id)
        assert row is not None
        return str(row["status"])


@pytest.fixture
def rig(database_url: str, cluster: str) -> Iterator[Rig]:
    pool = make_pool(database_url, SessionLimits(2000, "test-plans"), name="test-plans", max_size=2)
    pool.open(wait=True, timeout=10)
    clock = MarketClock(T0)
    market = market_over(SimSource(seed=1, symbols=["EURUSD", "DXY"], clock=clock))
    fencing = StaticFencing(cluster, 5)
    mono = [0.0]
    runner = PlanRunner(
        RunnerConfig(cluster, "leader", period_ms=0),
        fencing,
        pool,
        metrics=PlanMetrics(CollectorRegistry()),
        monotonic_ms=lambda: mono[0],
    )
    runner.market = market
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        set_leader(conn, cluster, 5)
        yield Rig(cluster, conn, runner, clock, fencing, mono)
    runner.stop()
    pool.close()


def test_plans_that_hold_execute_once_and_the_others_explain_why(rig: Rig) -> None:
    rig.add("now")  # no conditions: a pending order
    rig.add("empty", conditions={"all": []})
    rig.add("above", conditions={"type": "price_above", "symbol": "EURUSD", "level": "0.5"})
    rig.add("never", conditions={"all": [{"type": "price_above", "symbol": "EURUSD", "level": "5"}]})
    rig.add("nowhere", conditions={"type": "holds_above", "symbol": "NOPE", "timeframe": "M5", "level": "1", "bars": 2})
    rig.runner.on_started_leading(5)
    stats = rig.runner.run_round()
    assert sorted(stats.executed) == ["above", "empty", "now"] and stats.evaluated == 5
    assert [rig.status(p) for p in ("now", "empty", "above", "never", "nowhere")] == [
        "executing",
        "executing",
        "executing",
        "pending",
        "pending",
    ]
    signals = rig.conn.execute(
        "SELECT signal_id FROM signals WHERE cluster = %s ORDER BY signal_id", (rig.cluster,)
    ).fetchall()
    assert [s[0] for s in signals] == ["above:1", "empty:1", "now:1"]
    never = store.show(rig.conn, rig.cluster, "never")
    assert never is not None and never["reason"]["result"] == "false"
    (leaf,) = never["reason"]["conditions"]
    assert leaf["path"] == "conditions.all[0]" and leaf["threshold"] == "5" and leaf["age_ms"] is not None
    nowhere = store.show(rig.conn, rig.cluster, "nowhere")
    assert nowhere is not None and nowhere["reason"]["result"] == "unknown"
    assert "NOPE" in nowhere["reason"]["conditions"][0]["detail"]
    assert rig.runner.run_round().evaluated == 0  # nothing marked, nothing new
    assert rig.conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (rig.cluster,)).fetchone() == (3,)


def test_a_bar_close_marks_only_the_plans_reading_it(rig: Rig) -> None:
    rig.add("m1", conditions={"type": "holds_above", "symbol": "EURUSD", "timeframe": "M1", "level": "5", "bars": 1})
    rig.add("m15", conditions={"type": "holds_above", "symbol": "EURUSD", "timeframe": "M15", "level": "5", "bars": 1})
    rig.add("dxy", conditions={"type": "holds_above", "symbol": "DXY", "timeframe": "M1", "level": "500", "bars": 1})
    rig.runner.on_started_leading(5)
    assert rig.runner.run_round().evaluated == 3
    # bar conditions only: the feed is asked for no ticks on the plans' behalf
    assert rig.runner._subs and all(sub.on_tick is None for sub in rig.runner._subs)
    assert rig.runner.market is not None
    rig.clock.ms += 60_000 - T0 % 60_000 + 1  # the M1 bar closes, the M15 does not (18:14)
    rig.runner.market.pump()
    marked = rig.runner.run_round()
    assert marked.evaluated == 2  # m1 and dxy, not m15


def test_expiry_recovery_and_the_fence(rig: Rig) -> None:
    rig.add(
        "late", conditions={"type": "price_above", "symbol": "EURUSD", "level": "5"}, expires_at="2099-01-01T00:00:00Z"
    )
    rig.add("gone", expires_at="2099-01-01T00:00:00Z")
    rig.conn.execute(
        "UPDATE trade_plans SET expires_at = now() - interval '1 s' WHERE cluster = %s AND plan_id = 'gone'",
        (rig.cluster,),
    )
    # another replica led meanwhile: this one's epoch 5 writes nothing
    set_leader(rig.conn, rig.cluster, 6, "other")
    rig.runner.on_started_leading(5)
    with pytest.raises(Exception, match="superseded"):
        rig.runner.run_round()
    assert rig.status("gone") == "pending"
    set_leader(rig.conn, rig.cluster, 5)
    rig.runner.run_round()  # recovery runs again: it had not completed
    assert rig.status("gone") == "expired" and rig.status("late") == "pending"
    rig.conn.execute(
        "UPDATE trade_plans SET expires_at = now() - interval '1 s' WHERE cluster = %s AND plan_id = 'late'",
        (rig.cluster,),
    )
    rig.runner.run_round()
    assert rig.status("late") == "expired"
    assert rig.conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (rig.cluster,)).fetchone() == (0,)


def test_a_plan_whose_signal_is_now_refused_is_skipped_not_retried(rig: Rig) -> None:
    rig.add("ok")
    rig.add("bad")
    # what a later release's tighter rule would do: the stored plan's signal no longer validates
    rig.conn.execute(
        "UPDATE trade_plans SET plan = plan || '{\"sl\": \"9\"}' WHERE cluster = %s AND plan_id = 'bad'", (rig.cluster,)
    )
    rig.runner.on_started_leading(5)
    stats = rig.runner.run_round()
    assert stats.executed == ["ok"] and rig.status("bad") == "pending"
    assert rig.runner.run_round().evaluated == 0  # not loaded again until it is edited


def test_the_plans_closest_to_firing_go_first(rig: Rig) -> None:
    above = {"type": "price_above", "symbol": "EURUSD", "level": "0.5"}
    rig.add("a-two", conditions={"all": [above, above]})
    rig.add("b-one", conditions=above)
    rig.runner.on_started_leading(5)
    assert rig.runner.run_round().executed == ["b-one", "a-two"]


@dataclass(frozen=True)
class Confirms:
    """A detector that confirms the same pattern at every evaluation (as one does while the
    bar that confirmed it is the newest)."""

    guard: ClassVar[bool] = False
    type: ClassVar[str] = "confirms"

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [("EURUSD", Timeframe.M5)]

    def evaluate(self, snapshot: Snapshot) -> Reading:
        found = Pattern("EURUSD", Timeframe.M5, "bos_up", T0 - 600_000, T0 - 300_000, {"level": "1.1"})
        return Reading(Truth.FALSE, "bos_up seen, not enough", patterns=(found,))

    def to_json(self) -> dict[str, Any]:
        return {"type": "confirms"}


def test_confirmed_patterns_are_recorded_once(rig: Rig) -> None:
    plan = Plan(1, parse_plan(ORDER)[1].order, Leaf(Confirms(), False, "conditions"), None)
    for pid in ("p1", "p2"):  # two plans seeing the same pattern
        store.create(rig.conn, rig.cluster, "r1", pid, plan)
    rig.runner.on_started_leading(5)
    rig.runner.run_round()  # the stored plans do not load here (no such type): hold them by hand
    for pid in ("p1", "p2"):
        rig.runner._held[pid] = Held(1, plan, None)
        rig.runner._index.add(pid, plan.needs())
    for _ in range(2):
        rig.runner._marked |= {"p1", "p2"}
        assert rig.runner.run_round().evaluated == 2
    rows = rig.conn.execute(
        "SELECT symbol, timeframe, kind, params FROM pattern_history WHERE cluster = %s", (rig.cluster,)
    ).fetchall()
    assert rows == [("EURUSD", "M5", "bos_up", {"level": "1.1"})]


def pattern_bars(rig: Rig) -> list[int]:
    rows = rig.conn.execute(
        "SELECT bar_at FROM pattern_history WHERE cluster = %s ORDER BY bar_at", (rig.cluster,)
    ).fetchall()
    return [int(r[0].timestamp()) for r in rows]


def test_old_patterns_are_removed_while_leading_not_only_on_becoming_leader(rig: Rig) -> None:
    rig.runner.on_started_leading(5)
    rig.runner.run_round()  # recovery: nothing to remove yet
    keep = rig.runner.cfg.pattern_keep_s
    for bar_s, age_s in ((1_767_225_600, keep + 60), (1_767_225_900, 60)):
        rig.conn.execute(
            "INSERT INTO pattern_history (cluster, symbol, timeframe, kind, bar_at, confirmed_at, params, recorded_at)"
            " VALUES (%s, 'EURUSD', 'M5', 'bos_up', to_timestamp(%s), to_timestamp(%s), '{}',"
            " clock_timestamp() - %s * interval '1 second')",
            (rig.cluster, bar_s, bar_s + 300, age_s),
        )
    rig.runner.run_round()
    assert pattern_bars(rig) == [1_767_225_600, 1_767_225_900]  # not due yet
    rig.mono[0] += rig.runner.cfg.cleanup_every_ms
    # another replica leads meanwhile: this one's epoch removes nothing
    set_leader(rig.conn, rig.cluster, 6, "other")
    with pytest.raises(Exception, match="superseded"):
        rig.runner.run_round()
    assert pattern_bars(rig) == [1_767_225_600, 1_767_225_900]
    set_leader(rig.conn, rig.cluster, 5)
    rig.runner.run_round()
    assert pattern_bars(rig) == [1_767_225_900]  # the old one, past retention, gone; the fresh one kept


def test_restart_replaces_the_thread_and_the_old_one_exits(rig: Rig) -> None:
    beats: list[str] = []
    runner = PlanRunner(
        RunnerConfig(rig.cluster, "leader", period_ms=20),
        rig.fencing,
        rig.runner.pool,
        metrics=PlanMetrics(CollectorRegistry()),
        beat=lambda: beats.append(threading.current_thread().name),
    )
    assert rig.runner.market is not None
    runner.start(rig.runner.market)
    try:
        wait_for(lambda: len(beats) >= 2, 5, "the loop beats while following")
        old = runner._thread
        runner.restart()
        wait_for(lambda: not old.is_alive(), 5, "the old thread exits")
        count = len(beats)
        wait_for(lambda: len(beats) > count, 5, "the new thread beats")
        assert runner.alive and runner._thread is not old
    finally:
        runner.stop()
    assert not runner.alive


def test_position_state_of_a_plan_cancelled_meanwhile_is_removed_when_closed_and_kept_while_open(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    for pid in ("open", "closed", "fine"):
        rig.add(pid)
    rig.runner.on_started_leading(5)
    assert sorted(rig.runner.run_round().executed) == ["closed", "fine", "open"]
    for pid, closed in (("open", False), ("closed", True), ("fine", True)):
        rig.conn.execute(
            "INSERT INTO plan_execution_state (cluster, account, ticket, symbol, side, entry, initial_sl, volume,"
            " source, fingerprint, closed_at) SELECT cluster, 'paper', %s, 'EURUSD', 'buy', 1.1, 1.09, 0.01, 'signal',"
            " fingerprint, CASE WHEN %s THEN clock_timestamp() END FROM signals WHERE cluster = %s AND signal_id = %s",
            (f"T-{pid}", closed, rig.cluster, f"{pid}:1"),
        )
    # the faults the compare-and-set rules out: an executed plan shown as cancelled, and one gone
    rig.conn.execute(
        "UPDATE trade_plans SET status = 'cancelled', signal_fingerprint = NULL"
        " WHERE cluster = %s AND plan_id = 'open'",
        (rig.cluster,),
    )
    rig.conn.execute("DELETE FROM trade_plans WHERE cluster = %s AND plan_id = 'closed'", (rig.cluster,))
    rig.runner.on_started_leading(5)
    with caplog.at_level("WARNING", logger="haexec.plans"):
        rig.runner.run_round()
    rows = rig.conn.execute(
        "SELECT ticket FROM plan_execution_state WHERE cluster = %s ORDER BY ticket", (rig.cluster,)
    ).fetchall()
    assert [r[0] for r in rows] == ["T-fine", "T-open"]  # the closed one of a cancelled plan is gone
    critical = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
    assert any("position T-open of plan open (cancelled) is open: kept under management" in m for m in critical)
    assert any("closed position T-closed of plan closed (no such plan)" in r.getMessage() for r in caplog.records)
