"""Supervised loops: each long-lived loop of a replica stamps a heartbeat; a loop that stops
beating (or whose thread died) is restarted, within a budget; past the budget it is failed.

One supervisor per replica, on a thread of its own. Registering a loop is one line:

    loop.beat = supervisor.register("manager", period_ms, restart=loop.restart, alive=loop.alive)

and the loop calls `beat()` at least once per period. A loop with no heartbeat for
`STALL_PERIODS` x its period is restarted: its `restart` replaces its thread. A thread stuck
in a call that cannot be interrupted is not killed (Python cannot): it is abandoned, and
the loop's own code must make sure an abandoned thread cannot act (the executor's and the
feed's threads exit at their next step and cannot run beside their successor; every action
at a venue is fenced by the epoch anyway). At most `BUDGET` restarts per loop within
`WINDOW_MS`, counted in the restart log (PostgreSQL); the next failure marks the loop
failed: `on_failed` is told (the replica alerts, answers 503 on /health and gives up
leadership). A failed loop is tried again once its oldest restart has left the window.

A loop registered `leader_only` is judged only while this replica leads (`set_leading`): it
runs only then. Time is the injected monotonic clock; the log's window is the database's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from common.clock import SYSTEM_CLOCK, Clock
from common.errors import first_line
from engine import metrics
from engine.loop_restarts import FAILED, RESTARTED

log = logging.getLogger("haexec.engine.supervision")

STALL_PERIODS = 3
BUDGET = 3
WINDOW_MS = 3_600_000
CHECK_MS_MAX = 250.0  # the supervisor looks at least this often
# The supervisor's own wake-up this late means the process was paused (SIGSTOP, a suspended
# VM) or starved: its loops could not beat either, so none is blamed for that time.
LATE_MS = 1000.0


class RestartLog(Protocol):
    def recent(self, loop: str, window_ms: int) -> int:
        """Restarts of `loop` recorded within the last `window_ms`."""
        ...

    def record(self, loop: str, action: str, reason: str) -> None: ...


class InjectedFault(Exception):
    """HAEXEC_TEST_LOOP_FAULT: the named loop crashes at its heartbeat while this replica leads."""


OnEvent = Callable[[str, str], None]  # (loop, why)


@dataclass
class _Loop:
    name: str
    period_ms: float
    restart: Callable[[], None]
    alive: Callable[[], bool] | None
    leader_only: bool
    armed_at_ms: float
    beat_at_ms: float | None = None
    restarts: deque[float] = field(default_factory=deque)  # when, on the supervisor's clock
    failed: str | None = None
    abandoned: int = 0


class Heartbeat:
    """What a loop calls once per period. Safe from any thread: it rebinds one float."""

    def __init__(self, supervisor: Supervisor, loop: _Loop) -> None:
        self._supervisor = supervisor
        self._loop = loop

    def __call__(self) -> None:
        supervisor = self._supervisor
        if supervisor.fault == self._loop.name and supervisor.leading:
            raise InjectedFault(f"HAEXEC_TEST_LOOP_FAULT: {self._loop.name} crashes while leading")
        self._loop.beat_at_ms = supervisor.clock.now_ms()


class Supervisor:
    def __init__(
        self,
        log_store: RestartLog,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_restarted: OnEvent | None = None,
        on_failed: OnEvent | None = None,
        fault: str | None = None,
        budget: int = BUDGET,
        window_ms: int = WINDOW_MS,
    ) -> None:
        self.clock = clock
        self.fault = fault
        self.leading = False
        self._store = log_store
        self._on_restarted = on_restarted or (lambda loop, why: None)
        self._on_failed = on_failed or (lambda loop, why: None)
        self._budget = budget
        self._window_ms = window_ms
        self._loops: dict[str, _Loop] = {}
        self._lock = threading.Lock()  # one check at a time (the thread, a test, set_leading)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haexec-supervisor", daemon=True)

    # ---- registration ----

    def register(
        self,
        name: str,
        period_ms: float,
        restart: Callable[[], None],
        *,
        alive: Callable[[], bool] | None = None,
        leader_only: bool = False,
    ) -> Heartbeat:
        """Supervise a loop; returns the heartbeat it must call at least once per `period_ms`."""
        if name in self._loops:
            raise ValueError(f"loop {name!r} is registered already")
        if period_ms <= 0:
            raise ValueError(f"loop {name!r}: period must be positive, got {period_ms}")
        loop = _Loop(name, float(period_ms), restart, alive, leader_only, armed_at_ms=self.clock.now_ms())
        self._loops[name] = loop
        metrics.LOOP_RESTARTS.labels(name)
        metrics.LOOP_FAILED.labels(name).set(0)
        # NaN while the loop is not judged (a leader-only loop on a follower): no age to show.
        metrics.LOOP_HEARTBEAT_AGE.labels(name).set_function(
            lambda: self._age_s(loop) if self._judged(loop) else math.nan
        )
        return Heartbeat(self, loop)

    # ---- what the replica asks ----

    def set_leading(self, leading: bool) -> None:
        """Leader-only loops are judged from now on (or no longer): their first heartbeat is
        due within STALL_PERIODS x period of the leadership's start."""
        with self._lock:
            self.leading = leading
            now = self.clock.now_ms()
            for loop in self._loops.values():
                if loop.leader_only:
                    loop.armed_at_ms, loop.beat_at_ms = now, None

    def failed(self) -> dict[str, str]:
        """The failed loops and why."""
        return {loop.name: loop.failed for loop in self._loops.values() if loop.failed is not None}

    def health(self) -> str:
        """`ok`, or `failed: <loop> (<why>)`, each failed loop named."""
        failed = self.failed()
        if not failed:
            return "ok"
        return "failed: " + "; ".join(f"{name} ({why})" for name, why in sorted(failed.items()))

    def states(self) -> dict[str, dict[str, object]]:
        """Each loop as /health shows it."""
        out: dict[str, dict[str, object]] = {}
        for loop in self._loops.values():
            age = self._age_s(loop)
            out[loop.name] = {
                "state": "failed" if loop.failed else ("idle" if not self._judged(loop) else "ok"),
                "heartbeat_age_s": None if loop.beat_at_ms is None else round(age, 3),
                "period_ms": loop.period_ms,
                "restarts": len(loop.restarts),
                "abandoned_threads": loop.abandoned,
            }
        return out

    def wait_first_beats(self, timeout_s: float) -> list[str]:
        """Block until every loop judged now has beaten once; the ones that did not, by name."""
        deadline = time.monotonic() + timeout_s  # real time: start-up waits on real threads
        while True:
            missing = [n for n, loop in self._loops.items() if self._judged(loop) and loop.beat_at_ms is None]
            if not missing or time.monotonic() >= deadline:
                return missing
            self._stop.wait(0.01)

    # ---- the loop of loops ----

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        interval_s = self._interval_s()
        looked_at = self.clock.now_ms()
        while not self._stop.wait(interval_s):
            now = self.clock.now_ms()
            late_ms, looked_at = now - looked_at - interval_s * 1000, now
            try:
                if late_ms > LATE_MS:
                    self.excuse(late_ms)
                else:
                    self.check()
            except Exception:  # the supervisor must outlive a bug in one check
                log.exception("loop supervisor: unexpected error")

    def excuse(self, late_ms: float) -> None:
        """The process was not running for `late_ms` (this thread woke that late): judge every
        loop's silence from now, not from before the pause."""
        log.warning(
            "loop supervisor woke %.1fs late (process paused or starved): loops judged from now", late_ms / 1000
        )
        with self._lock:
            now = self.clock.now_ms()
            for loop in self._loops.values():
                loop.armed_at_ms = now

    def _interval_s(self) -> float:
        periods = [loop.period_ms for loop in self._loops.values()]
        return min([CHECK_MS_MAX, *periods]) / 1000.0

    def check(self) -> None:
        """One look at every loop: restart the stalled and the dead, fail the ones past budget."""
        with self._lock:
            for loop in self._loops.values():
                if not self._judged(loop):
                    continue
                if loop.failed is not None:
                    self._retry_failed(loop)
                    continue
                why = self._fault_of(loop)
                if why is not None:
                    self._failure(loop, why)

    def _judged(self, loop: _Loop) -> bool:
        return self.leading or not loop.leader_only

    def _fault_of(self, loop: _Loop) -> str | None:
        now = self.clock.now_ms()
        # A leader-only loop is started by the leadership callback, maybe just after it was
        # armed here: until its first heartbeat only silence counts against it.
        started = loop.beat_at_ms is not None or not loop.leader_only
        if loop.alive is not None and started and not loop.alive():
            return "its thread died"
        since = loop.armed_at_ms if loop.beat_at_ms is None else max(loop.beat_at_ms, loop.armed_at_ms)
        silent_ms = now - since
        if silent_ms > STALL_PERIODS * loop.period_ms:
            return f"no heartbeat for {silent_ms / 1000:.1f}s (period {loop.period_ms / 1000:g}s)"
        return None

    def _used(self, loop: _Loop) -> int:
        """Restarts within the window: the log's count, or this process's own when the log
        cannot be read (never fewer than this process made)."""
        now = self.clock.now_ms()
        while loop.restarts and now - loop.restarts[0] >= self._window_ms:
            loop.restarts.popleft()
        try:
            counted = self._store.recent(loop.name, self._window_ms)
        except Exception as e:  # the database may be the very thing that is down
            log.warning("loop %s: restart log unreadable (%s); counting this process's own", loop.name, first_line(e))
            counted = 0
        return max(counted, len(loop.restarts))

    def _failure(self, loop: _Loop, why: str) -> None:
        used = self._used(loop)
        if used >= self._budget:
            loop.failed = f"{why}; {used} restarts within the hour"
            metrics.LOOP_FAILED.labels(loop.name).set(1)
            log.critical("loop %s failed: %s", loop.name, loop.failed)
            self._record(loop, FAILED, why)
            self._on_failed(loop.name, loop.failed)
            return
        self._restart(loop, why)

    def _retry_failed(self, loop: _Loop) -> None:
        if self._used(loop) >= self._budget:
            return
        log.error("loop %s: its restart budget has room again; restarting the failed loop", loop.name)
        loop.failed = None
        metrics.LOOP_FAILED.labels(loop.name).set(0)
        self._restart(loop, "retried after a failure")

    def _restart(self, loop: _Loop, why: str) -> None:
        alive_before = loop.alive() if loop.alive is not None else True
        log.error("loop %s restarted: %s", loop.name, why)
        self._record(loop, RESTARTED, why)
        loop.restarts.append(self.clock.now_ms())
        metrics.LOOP_RESTARTS.labels(loop.name).inc()
        loop.armed_at_ms, loop.beat_at_ms = self.clock.now_ms(), None
        if alive_before:
            loop.abandoned += 1  # the stuck thread stays where it is; the loop's code disarms it
        try:
            loop.restart()
        except Exception:  # counted as the next failure: the loop will not beat
            log.exception("loop %s: restart failed", loop.name)
        self._on_restarted(loop.name, why)

    def _record(self, loop: _Loop, action: str, why: str) -> None:
        try:
            self._store.record(loop.name, action, why)
        except Exception as e:
            log.warning("loop %s: %s not recorded: %s", loop.name, action, first_line(e))

    def _age_s(self, loop: _Loop) -> float:
        since = loop.armed_at_ms if loop.beat_at_ms is None else loop.beat_at_ms
        return max(0.0, (self.clock.now_ms() - since) / 1000.0)
