"""The loop supervisor on an injected clock: a silent or dead loop is restarted, at most 3
times within the hour, the 4th failure marks it failed (once), a failed loop is tried again
when the window lets it, leader-only loops are judged only while leading, and the restart
log outlives the supervisor."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from common.clock import FakeClock
from engine import metrics
from engine.executor import Executor
from engine.market.feed import FeedRunner
from engine.supervision import Heartbeat, InjectedFault, Supervisor

HOUR_MS = 3_600_000


@dataclass
class MemoryLog:
    """The restart log on the test's clock (PgRestartLog on the database's)."""

    clock: FakeClock
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)
    broken: bool = False

    def recent(self, loop: str, window_ms: int) -> int:
        if self.broken:
            raise OSError("database down")
        now = self.clock.now_ms()
        return sum(1 for n, a, _, at in self.rows if n == loop and a == "restarted" and now - at < window_ms)

    def record(self, loop: str, action: str, reason: str) -> None:
        if self.broken:
            raise OSError("database down")
        self.rows.append((loop, action, reason, self.clock.now_ms()))


@dataclass
class Events:
    restarted: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def supervisor(clock: FakeClock, log: MemoryLog | None = None, fault: str | None = None) -> tuple[Supervisor, Events]:
    events = Events()
    sup = Supervisor(
        log or MemoryLog(clock),
        clock=clock,
        on_restarted=lambda loop, why: events.restarted.append((loop, why)),
        on_failed=lambda loop, why: events.failed.append((loop, why)),
        fault=fault,
    )
    return sup, events


def test_a_beating_loop_is_left_alone_and_a_silent_one_restarted_after_three_periods() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)
    restarts: list[int] = []
    beat = sup.register("sweep", 1000, lambda: restarts.append(1))
    for _ in range(10):
        clock.advance(900)
        beat()
        sup.check()
    assert restarts == [] and sup.health() == "ok"
    clock.advance(3000)
    sup.check()
    assert restarts == []  # exactly 3 periods: not yet
    clock.advance(1)
    sup.check()
    assert restarts == [1]
    assert events.restarted == [("sweep", "no heartbeat for 3.0s (period 1s)")]
    sup.check()
    assert restarts == [1]  # the restarted loop gets 3 periods of its own


def test_the_fourth_failure_within_the_hour_marks_the_loop_failed_once() -> None:
    clock = FakeClock()
    log = MemoryLog(clock)
    sup, events = supervisor(clock, log)
    restarts: list[int] = []
    sup.register("feed", 100, lambda: restarts.append(1))
    before = metrics.LOOP_RESTARTS.labels("feed")._value.get()
    for _ in range(3):
        clock.advance(301)
        sup.check()
    assert len(restarts) == 3 and sup.failed() == {}
    assert metrics.LOOP_RESTARTS.labels("feed")._value.get() - before == 3
    clock.advance(301)
    sup.check()
    assert len(restarts) == 3
    assert list(sup.failed()) == ["feed"]
    assert sup.health().startswith("failed: feed (no heartbeat for 0.3s")
    assert "3 restarts within the hour" in sup.health()
    assert metrics.LOOP_FAILED.labels("feed")._value.get() == 1
    assert [name for name, _ in events.failed] == ["feed"]
    clock.advance(10_000)
    sup.check()
    assert len(events.failed) == 1 and len(restarts) == 3  # failed stays failed, told once
    assert [a for _, a, _, _ in log.rows] == ["restarted"] * 3 + ["failed"]


def test_a_failed_loop_is_restarted_again_once_its_oldest_restart_left_the_hour() -> None:
    clock = FakeClock()
    sup, _ = supervisor(clock)
    restarts: list[float] = []
    sup.register("sweep", 1000, lambda: restarts.append(clock.now_ms()))
    for _ in range(4):
        clock.advance(3001)
        sup.check()
    assert list(sup.failed()) == ["sweep"]
    clock.advance(HOUR_MS - 4 * 3001)  # the first restart is just inside the hour
    sup.check()
    assert list(sup.failed()) == ["sweep"] and len(restarts) == 3
    clock.advance(3001)
    sup.check()
    assert sup.failed() == {} and len(restarts) == 4
    assert metrics.LOOP_FAILED.labels("sweep")._value.get() == 0


def test_restarts_spread_over_more_than_an_hour_never_fail() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)
    sup.register("spread", 1000, lambda: None)
    for _ in range(10):
        clock.advance(HOUR_MS / 3 + 1)
        sup.check()
    assert events.failed == [] and len(events.restarted) == 10


def test_the_budget_is_the_logs_so_a_new_supervisor_inherits_the_hours_restarts() -> None:
    clock = FakeClock()
    log = MemoryLog(clock)
    first, _ = supervisor(clock, log)
    first.register("executor", 1000, lambda: None)
    for _ in range(3):
        clock.advance(3001)
        first.check()
    second, events = supervisor(clock, log)  # the process restarted
    second.register("executor", 1000, lambda: None)
    clock.advance(3001)
    second.check()
    assert [name for name, _ in events.failed] == ["executor"]


def test_with_the_log_unreadable_the_process_counts_its_own_restarts() -> None:
    clock = FakeClock()
    log = MemoryLog(clock, broken=True)
    sup, events = supervisor(clock, log)
    sup.register("executor", 1000, lambda: None)
    for _ in range(4):
        clock.advance(3001)
        sup.check()
    assert len(events.restarted) == 3 and [name for name, _ in events.failed] == ["executor"]


def test_a_dead_thread_is_restarted_at_once() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)
    alive = [True]
    sup.register("feed", 250, lambda: alive.__setitem__(0, True), alive=lambda: alive[0])
    sup.check()
    assert events.restarted == []
    alive[0] = False
    sup.check()
    assert events.restarted == [("feed", "its thread died")] and alive[0]
    assert sup.states()["feed"]["abandoned_threads"] == 0  # a dead thread is not abandoned


def test_a_stuck_thread_is_abandoned_and_counted() -> None:
    clock = FakeClock()
    sup, _ = supervisor(clock)
    sup.register("sweep", 1000, lambda: None, alive=lambda: True)
    clock.advance(3001)
    sup.check()
    assert sup.states()["sweep"]["abandoned_threads"] == 1


def test_a_leader_only_loop_is_judged_only_while_leading_from_the_leaderships_start() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)
    beat = sup.register("manager", 1000, lambda: None, leader_only=True)
    clock.advance(60_000)
    sup.check()
    assert events.restarted == [] and sup.states()["manager"]["state"] == "idle"
    assert sup.wait_first_beats(0) == []  # a follower waits for no leader-only loop
    sup.set_leading(True)
    clock.advance(2999)
    sup.check()
    assert events.restarted == []
    beat()
    clock.advance(3001)
    sup.check()
    assert [name for name, _ in events.restarted] == ["manager"]
    sup.set_leading(False)
    clock.advance(60_000)
    sup.check()
    assert len(events.restarted) == 1


def test_a_leader_only_loop_not_started_yet_is_not_dead_until_it_has_beaten() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)
    alive = [False]
    beat = sup.register("manager", 1000, lambda: None, alive=lambda: alive[0], leader_only=True)
    sup.set_leading(True)
    sup.check()  # the leadership callback has not started it yet
    assert events.restarted == []
    alive[0] = True
    beat()
    alive[0] = False
    sup.check()
    assert events.restarted == [("manager", "its thread died")]


def test_after_a_pause_of_the_process_no_loop_is_blamed_for_it() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)
    beat = sup.register("feed", 1000, lambda: None)
    beat()
    clock.advance(20_000)  # SIGSTOP ... SIGCONT: the supervisor wakes 20 s late
    sup.excuse(20_000)
    sup.check()
    assert events.restarted == []
    clock.advance(3001)  # still silent 3 periods after the pause: now it is the loop
    sup.check()
    assert [name for name, _ in events.restarted] == ["feed"]


def test_the_supervisor_thread_excuses_a_late_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    sup, _ = supervisor(clock)
    sup.register("feed", 1000, lambda: None)
    excused: list[float] = []
    checks: list[int] = []
    monkeypatch.setattr(sup, "excuse", excused.append)
    monkeypatch.setattr(sup, "check", lambda: checks.append(1))
    lates = iter([5000, 0, None])  # a wake-up 5 s late, one on time, then stop

    def wait(timeout: float) -> bool:
        late = next(lates)
        if late is not None:
            clock.advance(timeout * 1000 + late)
        return late is None

    monkeypatch.setattr(sup._stop, "wait", wait)
    sup._run()
    assert excused == [5000] and checks == [1]


def test_start_up_waits_for_the_first_heartbeats_and_names_the_missing() -> None:
    clock = FakeClock()
    sup, _ = supervisor(clock)
    beat = sup.register("executor", 1000, lambda: None)
    sup.register("feed", 250, lambda: None)
    beat()
    assert sup.wait_first_beats(0.05) == ["feed"]


def test_the_injected_fault_crashes_the_named_loop_only_while_leading() -> None:
    clock = FakeClock()
    sup, _ = supervisor(clock, fault="executor")
    beat = sup.register("executor", 1000, lambda: None)
    other = sup.register("feed", 250, lambda: None)
    beat()
    sup.set_leading(True)
    with pytest.raises(InjectedFault):
        beat()
    other()


def test_a_restart_that_raises_is_the_next_failure() -> None:
    clock = FakeClock()
    sup, events = supervisor(clock)

    def broken() -> None:
        raise RuntimeError("cannot start")

    sup.register("sweep", 1000, broken)
    for _ in range(4):
        clock.advance(3001)
        sup.check()
    assert len(events.restarted) == 3 and len(events.failed) == 1


def test_heartbeat_age_is_a_gauge_computed_at_scrape() -> None:
    clock = FakeClock()
    sup, _ = supervisor(clock)
    beat = sup.register("aged", 1000, lambda: None)
    beat()
    clock.advance(1500)
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("haexec_loop_heartbeat_age_seconds", {"loop": "aged"}) == 1.5
    sup.register("idle", 1000, lambda: None, leader_only=True)
    assert math.isnan(REGISTRY.get_sample_value("haexec_loop_heartbeat_age_seconds", {"loop": "idle"}) or 0.0)


def test_registering_a_name_twice_is_refused() -> None:
    sup, _ = supervisor(FakeClock())
    sup.register("x", 10, lambda: None)
    with pytest.raises(ValueError, match="registered already"):
        sup.register("x", 10, lambda: None)


# ---- the loops' own restart: a replaced thread is retired, a stuck one abandoned ----


def wait(predicate: Callable[[], bool], what: str) -> None:
    from tests.support import wait_for

    wait_for(predicate, 5, what)


def test_a_restarted_feed_runner_replaces_a_stuck_thread_and_the_old_one_exits() -> None:
    release = threading.Event()
    pumps: list[str] = []

    class StuckFeed:
        def pump(self) -> int:
            pumps.append(threading.current_thread().name)
            if len(pumps) == 1:
                release.wait(5)  # the first pump hangs in its source call
            return 0

    runner = FeedRunner(StuckFeed(), interval_s=0.01)  # type: ignore[arg-type]
    beats: list[str] = []
    runner.beat = lambda: beats.append(threading.current_thread().name)
    runner.start()
    wait(lambda: len(pumps) == 1, "the first pump")
    first = runner._thread
    runner.restart()
    assert first.name == "market-feed-abandoned" and first.is_alive()
    wait(lambda: len(pumps) >= 3, "the new thread pumping")
    release.set()
    first.join(2)
    assert not first.is_alive()  # it returned, saw it was replaced, and exited
    assert runner.alive
    runner.stop()
    assert "market-feed-abandoned" not in pumps[1:]


def test_a_restarted_executor_thread_retires_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    sweeps: list[threading.Thread] = []
    executor = Executor.__new__(Executor)
    # Only what _run and restart touch: the loop, not the pipeline.
    executor._stop = threading.Event()
    executor._wake = threading.Event()
    executor._paused = threading.Event()
    executor._busy = threading.Lock()
    executor._generation = 0
    executor._mine = threading.local()
    executor.cfg = type("Cfg", (), {"sweep_ms": 10})()  # type: ignore[assignment]
    executor.beat = lambda: None
    hang = threading.Event()

    def sweep() -> None:
        sweeps.append(threading.current_thread())
        if len(sweeps) == 1:
            hang.wait(5)

    monkeypatch.setattr(executor, "_sweep", sweep)
    executor._thread = executor._sweeper()
    executor._thread.start()
    wait(lambda: len(sweeps) == 1, "the first sweep")
    old = executor._thread
    try:
        executor.restart()
        assert old.name == "haexec-executor-abandoned"
        assert len(sweeps) == 1  # the new thread cannot sweep beside the stuck one
        hang.set()
        wait(lambda: len(sweeps) >= 3, "the new thread sweeping")
        old.join(2)
        assert not old.is_alive() and executor.alive
        assert sweeps.count(old) == 1  # the old one never swept again
    finally:
        hang.set()
        executor._stop.set()
        executor._wake.set()
        executor._thread.join(2)


def test_heartbeat_is_callable_as_the_loops_hook() -> None:
    sup, _ = supervisor(FakeClock())
    beat = sup.register("hook", 100, lambda: None)
    assert isinstance(beat, Heartbeat)
    beat()
    assert sup.states()["hook"]["heartbeat_age_s"] == 0.0
