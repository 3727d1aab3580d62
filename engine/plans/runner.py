"""The leader's plan loop: on its own thread, working only while this replica leads.

Each round: load new and edited pending plans (by revision), expire those past due, and
evaluate the plans marked since the last round (a bar close of a (symbol, timeframe) they
read, a tick of a symbol a price condition reads, a plan new or edited, and every plan at
least every `full_every_ms` as a backstop), all on one RoundSnapshot, so each series is read
once per round whatever the number of plans. A plan that holds executes in its own
transaction fenced by the epoch (store.execute); the reason vectors and the confirmed
patterns of the round are written in one more fenced transaction.

On becoming leader (recovery): expire what is past due, check pattern_history (its size, any
row confirmed in the future, the retention cleanup), that no cancelled or expired plan has a
signal, and plan_execution_state against the plans: the row of a position opened by a plan
that is cancelled, expired or gone is removed when the position is closed and kept, with a
CRITICAL line, while it is open (its stop is managed whatever its plan became). The
retention cleanup runs again every `cleanup_every_ms` while the replica leads: a leader that
keeps its lease for months must not let the table grow without bound.

For the supervisor (engine/supervision.py): `period_ms` is the longest a healthy loop
goes between beats, `beat` (given at construction, or assigned) is called after every round
that completed, leader or not, `alive` and `restart` as the supervisor asks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from common.errors import first_line
from coordinator.fencing import EpochSuperseded, NotLeader
from engine.executor import Fencing
from engine.market.base import Bars, Tick, Timeframe
from engine.market.feed import Subscription
from engine.market.service import Market
from engine.plans import store
from engine.plans.conditions.base import NewsEvent, Pattern, Truth
from engine.plans.evaluator import SKIPPED, Evaluation, LeafResult, PlanIndex, RoundSnapshot, evaluate, lookbacks
from engine.plans.metrics import PlanMetrics, default_metrics
from engine.plans.model import Plan, PlanValidationError, parse_plan
from engine.positions import store as positions_store
from engine.signal import SignalValidationError

log = logging.getLogger("haexec.plans")

DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
REASON_EVERY_MS = 5_000


@dataclass(frozen=True)
class RunnerConfig:
    cluster: str
    instance_id: str
    period_ms: int = 1000  # reload, expiry and the longest wait between rounds
    full_every_ms: int = 30_000  # every plan is evaluated at least this often
    audit_every_ms: int = 60_000  # pattern_history size, executions after cancel
    pattern_keep_s: int = 30 * 86_400  # pattern_history retention
    cleanup_every_ms: int = 3_600_000  # the retention cleanup while leading (also on becoming leader)


@dataclass
class Held:
    revision: int
    plan: Plan
    expires_ms: int | None
    evaluated_ms: float = float("-inf")
    written: str = ""  # the values of the last reason written
    written_ms: float = float("-inf")
    unmet: int = 0  # conditions not TRUE at the last evaluation (0 before the first)
    size: int = field(init=False)  # how many conditions

    def __post_init__(self) -> None:
        self.size = sum(1 for _ in self.plan.leaves())


@dataclass
class RoundStats:
    evaluated: int = 0
    executed: list[str] = field(default_factory=list)
    committed_at: list[float] = field(default_factory=list)  # perf_counter() at each execution's commit
    seconds: float = 0.0


class PlanRunner:
    def __init__(
        self,
        cfg: RunnerConfig,
        fencing: Fencing,
        pool: ConnectionPool,
        *,
        metrics: PlanMetrics | None = None,
        beat: Callable[[], None] | None = None,
        monotonic_ms: Callable[[], float] = lambda: time.monotonic() * 1000,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.cfg = cfg
        self.fencing = fencing
        self.pool = pool
        self.metrics = metrics or default_metrics()
        self.beat = beat or (lambda: None)
        self._now = monotonic_ms
        self._wall = wall_ms  # expiry is wall time, as the database's statement_timestamp()
        self.market: Market | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the index and the marks, shared with the feed's thread
        self._generation = 0  # a restart's new thread is the next generation; the old one exits
        self._thread = self._new_thread()
        self._leading: int | None = None
        self._recover = False
        self._held: dict[str, Held] = {}
        self._index = PlanIndex()
        self._marked: set[str] = set()
        # plan_id -> revision that cannot run here (a stored plan that no longer loads, a
        # signal the intake now refuses): logged once, skipped until the plan is edited.
        self._broken: dict[str, int] = {}
        self._lookback: dict[tuple[str, Timeframe], int] = {}
        self._subs: list[Subscription] = []
        self._watching: frozenset[tuple[str, Timeframe | None]] = frozenset()
        self._next_sync_ms = 0.0
        self._next_audit_ms = 0.0
        self._next_cleanup_ms = 0.0
        self.last_round: RoundStats = RoundStats()

    @property
    def period_ms(self) -> int:
        return self.cfg.period_ms

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- life cycle ----

    def start(self, market: Market) -> None:
        self.market = market
        self._thread.start()

    def restart(self) -> None:
        """A new thread for a loop that stopped beating (a supervisor's call). The old one, if
        it is stuck, exits at its next step; whatever it does before is fenced by the epoch
        and every plan's move is a compare-and-set, so it cannot execute a plan twice. The
        new thread recovers as a new leader does (everything reloaded from the database)."""
        self._generation += 1
        self._recover = self._leading is not None
        self._thread = self._new_thread()
        self._thread.start()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._loop, args=(self._generation,), name="haexec-plans", daemon=True)

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._drop()

    def on_started_leading(self, epoch: int) -> None:
        self._leading = epoch
        self._recover = True
        self._wake.set()

    def on_stopped_leading(self, epoch: int, reason: str) -> None:
        self._leading = None
        self._wake.set()

    # ---- market events (the feed's thread) ----

    def _on_bar(self, bars: Bars) -> None:
        with self._lock:
            self._marked |= self._index.on_bar(bars.symbol, bars.timeframe)
        self._wake.set()

    def _on_tick(self, tick: Tick) -> None:
        with self._lock:
            hit = self._index.on_tick(tick.symbol)
            self._marked |= hit
        if hit:
            self._wake.set()

    # ---- the loop ----

    def _loop(self, generation: int) -> None:
        self.beat()  # running: the first heartbeat start-up waits for, not a period later
        while not self._stop.is_set() and generation == self._generation:
            self._wake.wait(self.cfg.period_ms / 1000)
            self._wake.clear()
            if self._stop.is_set() or generation != self._generation:
                break
            if self._leading is None:
                self._drop()
                self.beat()
                continue
            try:
                self.run_round()
            except (EpochSuperseded, NotLeader) as exc:
                log.warning("plans: no longer leading: %s", first_line(exc))
                self._drop()
                continue
            except DB_ERRORS as exc:
                log.warning("plans: database: %s", first_line(exc))
                continue
            except Exception:
                log.exception("plans: round failed")
                continue
            self.beat()

    def run_round(self) -> RoundStats:
        """One round, on the caller's thread (the loop's, or a test's)."""
        assert self.market is not None, "start(market) first"
        started = time.perf_counter()
        now = self._now()
        if self._recover:
            self._recovery()
            self._recover = False
            self._next_sync_ms = 0.0
        if now >= self._next_sync_ms:
            self._sync()
            self._next_sync_ms = now + self.cfg.period_ms
        if now >= self._next_audit_ms:
            self._audit()
            self._next_audit_ms = now + self.cfg.audit_every_ms
        if now >= self._next_cleanup_ms:
            self._cleanup()
            self._next_cleanup_ms = now + self.cfg.cleanup_every_ms
        wall = self._wall()
        if any(h.expires_ms is not None and h.expires_ms <= wall for h in self._held.values()):
            self._expire()
        with self._lock:
            marked, self._marked = self._marked, set()
        due = {pid for pid, h in self._held.items() if now - h.evaluated_ms >= self.cfg.full_every_ms}
        # Closest to firing first (fewest conditions short of TRUE at the last evaluation, then
        # fewest conditions): a plan about to fire does not wait behind the round's others.
        todo = sorted((marked | due) & self._held.keys(), key=lambda p: (self._held[p].unmet, self._held[p].size, p))
        stats = self._evaluate(todo, self.market.source.now_ms(), now)
        stats.seconds = time.perf_counter() - started
        self.metrics.round_seconds.observe(stats.seconds)
        self.last_round = stats
        return stats

    def _recovery(self) -> None:
        with self.pool.connection() as conn, self.fencing.fenced(conn) as (cur, fence):
            expired = store.expire_due(cur, self.cfg.cluster)
            removed = store.cleanup_patterns(cur, self.cfg.cluster, self.cfg.pattern_keep_s)
            self._check_positions(cur)
        self._next_cleanup_ms = self._now() + self.cfg.cleanup_every_ms
        with self.pool.connection() as conn:
            rows, suspect = store.count_patterns(conn, self.cfg.cluster)
        if suspect:
            log.error("plans: %d pattern_history rows confirmed in the future: a clock or detector fault", suspect)
        log.info(
            "plans: recovery at epoch %s: %d expired, %d old patterns removed, %d patterns kept",
            fence.epoch,
            len(expired),
            removed,
            rows,
        )
        self._next_audit_ms = 0.0

    def _check_positions(self, cur: psycopg.Cursor) -> None:
        """plan_execution_state against the plans, in the recovery's fenced transaction."""
        for o in positions_store.plan_orphans(cur, self.cfg.cluster):
            plan = f"plan {o.plan_id} ({o.status or 'no such plan'})"
            if o.open:
                log.critical("plans: position %s of %s is open: kept under management", o.ticket, plan)
            elif positions_store.remove_closed(cur, self.cfg.cluster, o.account, o.ticket):
                log.warning("plans: closed position %s of %s: its state row removed", o.ticket, plan)

    def _cleanup(self) -> None:
        with self.pool.connection() as conn, self.fencing.fenced(conn) as (cur, _):
            removed = store.cleanup_patterns(cur, self.cfg.cluster, self.cfg.pattern_keep_s)
        if removed:
            log.info("plans: %d patterns older than %d s removed", removed, self.cfg.pattern_keep_s)

    def _audit(self) -> None:
        with self.pool.connection() as conn:
            after = store.executions_after_cancel(conn, self.cfg.cluster)
            rows, _ = store.count_patterns(conn, self.cfg.cluster)
        self.metrics.after_cancel.set(after)
        self.metrics.patterns.set(rows)
        if after:
            log.critical("plans: %d cancelled or expired plans have a signal", after)

    def _sync(self) -> None:
        """Hold exactly the pending plans at their current revision."""
        with self.pool.connection() as conn:
            keys = store.pending_keys(conn, self.cfg.cluster)
            changed = [
                pid
                for pid, (rev, _) in keys.items()
                if (pid not in self._held or self._held[pid].revision != rev) and self._broken.get(pid) != rev
            ]
            loaded = store.plans_by_id(conn, self.cfg.cluster, changed) if changed else []
        with self._lock:
            for pid in [p for p in self._held if p not in keys]:
                del self._held[pid]
                self._index.remove(pid)
            for pid, held in self._held.items():
                held.expires_ms = _ms(keys[pid][1])
            for row in loaded:
                try:
                    _, plan = parse_plan(row.plan, row.plan_id)
                except PlanValidationError as exc:  # a stored plan always parsed once: a compatibility bug
                    log.error("plans: stored plan %s revision %d no longer loads: %s", row.plan_id, row.revision, exc)
                    self._broken[row.plan_id] = row.revision
                    continue
                self._held[row.plan_id] = Held(row.revision, plan, _ms(keys[row.plan_id][1]))
                self._index.add(row.plan_id, plan.needs())
                self._marked.add(row.plan_id)
            self._lookback = lookbacks(h.plan for h in self._held.values())
        self.metrics.active.set(len(self._held))
        self._watch()

    def _watch(self) -> None:
        """Subscribe to the bar closes and ticks the held plans read: bars of the symbols with
        a bar condition, ticks of those with a price condition (known symbols only: a plan on
        a symbol the source lacks is UNKNOWN, which the evaluation says)."""
        assert self.market is not None
        with self._lock:
            needs = frozenset(self._index.needs())
        if needs == self._watching:
            return
        self._unsubscribe()
        self._watching = needs
        known = set(self.market.symbols())
        bar_symbols = sorted({s for s, tf in needs if tf is not None} & known)
        tick_symbols = sorted({s for s, tf in needs if tf is None} & known)
        if bar_symbols:
            ordered = sorted({tf for _, tf in needs if tf is not None}, key=lambda t: t.value)
            tfs: list[Timeframe | str] = list(ordered)
            self._subs.append(self.market.subscribe(bar_symbols, on_bar=self._on_bar, timeframes=tfs))
        if tick_symbols:
            self._subs.append(self.market.subscribe(tick_symbols, on_tick=self._on_tick))

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()

    def _expire(self) -> None:
        with self.pool.connection() as conn, self.fencing.fenced(conn) as (cur, _):
            expired = store.expire_due(cur, self.cfg.cluster)
        with self._lock:
            for pid in expired:
                self._held.pop(pid, None)
                self._index.remove(pid)
        for pid in expired:
            log.info("plans: %s expired before its conditions held", pid)

    def _news(self, from_ms: int, to_ms: int) -> list[NewsEvent]:
        with self.pool.connection() as conn:
            return store.news_between(conn, from_ms, to_ms)

    def _observe(self, leaf: LeafResult) -> None:
        self.metrics.checks.labels(leaf.type, leaf.truth.value).inc()
        self.metrics.check_seconds.observe(leaf.seconds)
        if leaf.detail.startswith("check failed"):
            self.metrics.failures.labels(leaf.type).inc()
        if leaf.seconds > 0.5:
            log.warning("plans: condition %s (%s) took %.0f ms", leaf.path, leaf.type, leaf.seconds * 1000)

    def _evaluate(self, plan_ids: list[str], market_ms: int, now: float) -> RoundStats:
        assert self.market is not None
        stats = RoundStats()
        if not plan_ids:
            return stats
        snap = RoundSnapshot(self.market, market_ms, self._news, lookback=dict(self._lookback))
        reasons: list[tuple[str, int, dict[str, Any]]] = []
        patterns: list[Pattern] = []
        for pid in plan_ids:
            held = self._held.get(pid)
            if held is None:
                continue
            ev = evaluate(held.plan, snap, self._observe)
            held.evaluated_ms = now
            held.unmet = sum(1 for r in ev.leaves if r.effective not in ("true", SKIPPED))
            stats.evaluated += 1
            patterns.extend(ev.patterns)
            if ev.truth is Truth.TRUE and self._execute(pid, held, ev):
                stats.executed.append(pid)
                stats.committed_at.append(time.perf_counter())
                continue
            # Written when a value changed, else at most every REASON_EVERY_MS: a price plan is
            # evaluated on every tick, and its measured price alone is not worth a write.
            reason = ev.reason()
            values = json.dumps(_values(reason), sort_keys=True)
            if values != held.written or now - held.written_ms >= REASON_EVERY_MS:
                held.written, held.written_ms = values, now
                reasons.append((pid, held.revision, reason))
        self.metrics.data.labels("miss").inc(snap.reads)
        self.metrics.data.labels("hit").inc(snap.requests - snap.reads + snap.shared_readings)
        if reasons or patterns:
            with self.pool.connection() as conn, self.fencing.fenced(conn) as (cur, _):
                store.record_reasons(cur, self.cfg.cluster, reasons)
                store.record_patterns(cur, self.cfg.cluster, patterns)
        return stats

    def _execute(self, pid: str, held: Held, ev: Evaluation) -> bool:
        try:
            held.plan.signal_intent(pid, held.revision)
        except SignalValidationError as exc:  # rules tightened since the plan was stored
            log.error("plans: %s revision %d held, but its signal is refused: %s", pid, held.revision, exc)
            self._broken[pid] = held.revision
            with self._lock:
                self._held.pop(pid, None)
                self._index.remove(pid)
            return False
        with self.pool.connection() as conn, self.fencing.fenced(conn) as (cur, fence):
            fp = store.execute(
                conn,
                cur,
                self.cfg.cluster,
                self.cfg.instance_id,
                fence.epoch,
                pid,
                held.revision,
                held.plan,
                ev.reason(),
            )
        with self._lock:
            self._held.pop(pid, None)
            self._index.remove(pid)
        if fp is None:
            log.info("plans: %s revision %d held but was no longer pending at that revision", pid, held.revision)
            return False
        self.metrics.executions.inc()
        log.info("plans: %s revision %d executed as signal %s", pid, held.revision, fp[:16])
        return True

    def _drop(self) -> None:
        """Forget everything a term held: a new term loads it again from the database."""
        self._unsubscribe()
        with self._lock:
            self._held.clear()
            self._index = PlanIndex()
            self._marked.clear()
            self._watching = frozenset()
        self.metrics.active.set(0)


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _values(reason: dict[str, Any]) -> list[Any]:
    """What a reason says, without what it measured: each condition's value as used."""
    return [reason["result"], *((c["path"], c["value"], c["effective"]) for c in reason["conditions"])]
