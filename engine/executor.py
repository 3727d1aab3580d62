"""The leader's executor: DESIGN.md's signal path, one signal at a time, on its own thread.

Woken by LISTEN/NOTIFY (a dedicated connection; every (re)connect also sweeps), by becoming
leader, and by a sweep timer, so a lost notification delays a signal, never loses it. Every
new action is fenced by the coordinator's epoch; every outcome is recorded, even after this
replica lost leadership.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from common.errors import first_line
from coordinator.elector import Fence
from coordinator.fencing import EpochSuperseded, NotLeader
from db.session import SessionLimits, connect
from engine import controls, metrics, store
from engine.breaker import CircuitBreaker
from engine.brokers.base import (
    BookingVenue,
    Broker,
    BrokerError,
    OrderRequest,
    OrderResult,
    Outcome,
    Quote,
    SymbolUnavailable,
    TagInDoubt,
)
from engine.db_health import DbHealth
from engine.duplicates import DuplicateGuard
from engine.model import SignalStatus
from engine.risk import RiskLimits, RiskRejected, risk_cap, size_order
from engine.signal import intent_from_payload

log = logging.getLogger("haexec.engine")

Order = tuple[int, OrderRequest]  # a claimed signal's id and the order it becomes

Alert = Callable[..., None]
DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
HANDED_BACK = "handed back: stopping, switchover or circuit open"
OUTCOME_STATUS = {
    Outcome.DONE: SignalStatus.EXECUTED,
    Outcome.REJECTED: SignalStatus.REJECTED,
    Outcome.UNKNOWN: SignalStatus.IN_DOUBT,
    Outcome.EXPIRED: SignalStatus.EXPIRED,
}


class Fencing(Protocol):
    """All the executor needs of the coordinator: the trusted epoch, and a transaction fenced
    by it (coordinator.service.Coordinator is one)."""

    def fence(self, min_remaining_ms: float = 0.0) -> Fence: ...

    def fenced(self, conn: psycopg.Connection) -> AbstractContextManager[tuple[psycopg.Cursor, Fence]]: ...


@dataclass(frozen=True)
class ExecutorConfig:
    cluster: str
    instance_id: str
    broker_deadline_ms: int
    drift_margin_ms: int
    sweep_ms: int = 1000
    batch: int = 64
    in_doubt_policy: str = "hold"  # or "reexecute"; only for venues that cannot fence
    in_doubt_grace_ms: int = 0  # 0: twice the broker deadline

    @property
    def grace_ms(self) -> int:
        return self.in_doubt_grace_ms or 2 * self.broker_deadline_ms


def settlements(orders: list[Order], results: list[OrderResult]) -> list[store.Settlement]:
    """The venue's answers as the signals' outcomes."""
    out = []
    for (signal, req), result in zip(orders, results, strict=True):
        done = result.outcome is Outcome.DONE
        out.append(
            store.Settlement(
                signal,
                OUTCOME_STATUS[result.outcome],
                result.outcome.value,
                ref=result.ref,
                volume=req.volume if done else None,
                price=result.price,
                error=None if done else (result.detail or result.outcome.value),
            )
        )
    return out


class Executor:
    def __init__(
        self,
        cfg: ExecutorConfig,
        coordinator: Fencing,
        pool: ConnectionPool,
        database_url: str,
        broker: Broker,
        breaker: CircuitBreaker,
        risk_limits: RiskLimits,
        alert: Alert | None = None,
        reconcile: Callable[[int], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self._coord = coordinator
        self._pool = pool
        self._database_url = database_url
        self._broker = broker
        self._breaker = breaker
        self._limits = risk_limits
        self._alert = alert or (lambda *a, **k: None)
        self._reconcile = reconcile
        self._duplicates = DuplicateGuard(cfg.cluster, pool, broker, self._alert, self._lease_allows_send)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = threading.Event()  # a switchover: claim nothing new
        self._busy = threading.Lock()  # held while a sweep works, so quiesce() can wait it out
        self._prepared_epoch: int | None = None
        self._housekept_at = 0.0
        self._controls_at = float("-inf")
        self._switch: controls.KillSwitch | None = None  # as last read; None before the first read
        # What a database error left mid-batch, put right at the next sweep: signals never
        # sent (handed back, not held in doubt) and sent orders' outcomes not yet recorded.
        self._unsent: dict[int, set[int]] = {}  # epoch -> signal ids
        self._unrecorded: list[tuple[int, list[store.Settlement]]] = []
        self._db = DbHealth(time.monotonic())  # replaced whole, never mutated: see db_health
        # The supervisor's heartbeat (engine/supervision.py), called at every step of a sweep.
        self.beat: Callable[[], None] = lambda: None
        # Symbols new trading is held on, with why: a position the database holds vanished
        # from the venue with no deal (the position manager's recovery). A signal on one is
        # rejected naming the hold, never sent into a book that disagrees with the database.
        self.held_symbols: Callable[[], Mapping[str, str]] = dict
        # Which sweeping thread is the current one: restart() moves it on, and a thread of an
        # earlier generation (abandoned while stuck) stops at its next step.
        self._generation = 0
        self._mine = threading.local()
        self._thread = self._sweeper()
        self._listener = threading.Thread(target=self._listen, name="haexec-listen", daemon=True)

    # ---- lifecycle (leadership callbacks only wake; the work is on this thread) ----

    def start(self) -> None:
        self._listener.start()
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop claiming; an in-flight broker call finishes (up to its deadline) and is recorded."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # never started: a start-up that failed before it
            self._thread.join(timeout_s)

    def restart(self) -> None:
        """Replace the sweeping thread (the supervisor found it silent or dead). A thread stuck
        in a call is abandoned, not killed: it cannot sweep beside its successor (the busy
        lock), stops claiming or sending at its next step (`_retired`), and what it may still
        do at a venue is fenced by its epoch like any paused leader's."""
        old = self._thread
        self._generation += 1
        if old.is_alive():
            old.name = f"{old.name}-abandoned"
            log.error("executor: thread %s abandoned (stuck); a new one takes over", old.name)
        self._thread = self._sweeper()
        self._thread.start()

    def _sweeper(self) -> threading.Thread:
        generation = self._generation
        return threading.Thread(target=self._run, args=(generation,), name="haexec-executor", daemon=True)

    def _retired(self) -> bool:
        """Stopping, or this thread was replaced by restart(). A thread that is no sweeper (a
        test calling a sweep) is never retired."""
        return self._stop.is_set() or getattr(self._mine, "generation", self._generation) != self._generation

    def quiesce(self, timeout_s: float) -> bool:
        """Stop claiming and wait until the work in hand is done (or handed back)."""
        self._paused.set()
        if not self._busy.acquire(timeout=timeout_s):
            return False
        self._busy.release()
        return True

    def resume(self) -> None:
        self._paused.clear()
        self._wake.set()

    def on_started_leading(self, epoch: int) -> None:
        self._wake.set()

    def on_stopped_leading(self, epoch: int, reason: str) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def kill_switch(self) -> controls.KillSwitch | None:
        """The kill switch as this replica last read it (every sweep interval), or None."""
        return self._switch

    @property
    def db_health(self) -> DbHealth:
        """When a sweep last got through to the database, and its error since. Safe from any
        thread: the executor's thread only ever rebinds it to a new frozen snapshot."""
        return self._db

    # ---- wake-ups ----

    def _listen(self) -> None:
        """LISTEN on a dedicated connection; every (re)connect also triggers a sweep."""
        while not self._stop.is_set():
            try:
                conn = connect(self._database_url, SessionLimits(5000, f"haexec-listen-{self.cfg.instance_id}"))
            except psycopg.Error:
                self._stop.wait(1.0)
                continue
            try:
                conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
                self._wake.set()  # anything that arrived while not listening
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        if note.payload == self.cfg.cluster:
                            self._wake.set()
            except psycopg.Error as e:
                log.warning("signal listener lost its connection: %s", first_line(e))
            finally:
                conn.close()

    # ---- the loop ----

    def _run(self, generation: int) -> None:
        self._mine.generation = generation
        while not self._retired():
            self.beat()
            self._wake.wait(self.cfg.sweep_ms / 1000.0)
            self._wake.clear()
            if self._retired():
                break
            if self._paused.is_set():
                continue
            with self._busy:
                if self._retired():  # replaced while it waited for a stuck predecessor
                    break
                self._sweep()

    def _sweep(self) -> None:
        if self._unsent or self._unrecorded:
            try:
                self._put_right()
            except DB_ERRORS as e:
                log.warning("executor: database: %s", first_line(e))
                self._db = self._db.failed(first_line(e))
                return
        self.beat()  # between the steps of a sweep, each bounded by one call's deadline
        self._sample_controls()
        self.beat()
        try:
            fence = self._coord.fence()
        except NotLeader:
            self._prepared_epoch = None
            return
        try:
            now = time.monotonic()
            housekeeping = now - self._housekept_at >= self.cfg.sweep_ms / 1000.0
            if fence.epoch != self._prepared_epoch:
                self._take_office(fence.epoch)
                self._prepared_epoch = fence.epoch
                housekeeping = True
            if housekeeping:  # on the timer, not on every NOTIFY: keeps a lone signal's path short
                self._housekept_at = now
                self._expire()
                self.beat()
                self._resolve_unsettled(fence.epoch)
                self.beat()
                self._scan_duplicates(fence.epoch)
            self._drain()
        except NotLeader:
            return
        except EpochSuperseded as e:
            log.warning("executor stopped: %s", e)
        except DB_ERRORS as e:
            log.warning("executor: database: %s", first_line(e))
            self._db = self._db.failed(first_line(e))
        except Exception:
            log.exception("executor: unexpected error; retrying at the next sweep")
        else:
            self._db = DbHealth(time.monotonic())

    def _sample_controls(self) -> None:
        """Every replica, leader or not, reads the kill switch once per sweep interval, so
        `haexec_halted` is right on whichever replica is scraped."""
        now = time.monotonic()
        if now - self._controls_at < self.cfg.sweep_ms / 1000.0:
            return
        self._controls_at = now
        try:
            with self._pool.connection() as conn:
                self._switch = controls.read(conn, self.cfg.cluster)
        except DB_ERRORS as e:
            log.debug("kill switch not sampled: %s", first_line(e))

    def _take_office(self, epoch: int) -> None:
        """Before the first claim under a new epoch: reconcile with the broker (bounded)."""
        if self._reconcile is not None:
            self.beat()
            try:
                self._reconcile(epoch)
                self.beat()
            except Exception as e:  # a failed reconciliation is reported, never blocks trading forever
                log.error("reconciliation at epoch %d failed: %s", epoch, e)

    def _put_right(self) -> None:
        """Record what a database error left unrecorded, then hand back what was never sent.
        Recording needs no lease (a fact is kept even after leadership is lost); the hand-back
        moves only signals still executing under the epoch that claimed them."""
        while self._unrecorded:
            epoch, settled = self._unrecorded[0]
            self._settle(epoch, settled)
            self._unrecorded.pop(0)
        for epoch in list(self._unsent):
            self._requeue(sorted(self._unsent[epoch]), epoch, "handed back after a database error; never sent")
            del self._unsent[epoch]

    def _expire(self) -> None:
        with self._pool.connection() as conn:
            if not store.any_due(conn, self.cfg.cluster):
                return
            with self._coord.fenced(conn) as (cur, fence):
                expired = store.expire_due(cur, self.cfg.cluster, self.cfg.instance_id, fence.epoch)
        self._expired(expired)

    def _expired(self, fingerprints: list[str]) -> None:
        for fp in fingerprints:
            metrics.SIGNALS.labels("expired").inc()
            log.error("signal %s expired before execution", fp)
            self._alert("signal_expired", "error", f"signal {fp} expired before execution", fingerprint=fp)

    def _drain(self) -> None:
        while not (self._retired() or self._paused.is_set()):
            self.beat()
            if not self._breaker.allow():
                return  # signals wait while the broker's circuit is open; they are not failed
            with self._pool.connection() as conn:
                if not store.any_received(conn, self.cfg.cluster):
                    return  # a read first, so an idle leader's sweep writes nothing
                with self._coord.fenced(conn) as (cur, fence):
                    switch = self._switch = controls.read(cur, self.cfg.cluster)
                    got = store.claim(cur, self.cfg.cluster, self.cfg.instance_id, fence.epoch, self.cfg.batch)
            self._expired(got.expired)
            if got.claimed:
                self._execute(got.claimed, fence.epoch, switch)
            if len(got.claimed) + len(got.expired) < self.cfg.batch:
                return  # that was all of them; a signal arriving meanwhile NOTIFYs again

    def _exposure(self) -> int:
        """Open positions and pending orders: a pending order can fill at any time."""
        counter = getattr(self._broker, "open_exposure", None)
        return counter() if counter else len(self._broker.positions()) + len(self._broker.orders())

    def _quotes(self, symbols: set[str]) -> dict[str, Quote | SymbolUnavailable]:
        """Each symbol's spec and price, or why the venue cannot trade it. A BrokerError (the
        venue unreachable) propagates: the batch goes back, nothing is refused for it."""
        out: dict[str, Quote | SymbolUnavailable] = {}
        for symbol in sorted(symbols):
            self.beat()
            try:
                out[symbol] = self._broker.quote(symbol)
            except SymbolUnavailable as e:
                out[symbol] = e
        return out

    # ---- a claimed batch ----

    def _execute(self, claimed: list[store.Claimed], epoch: int, switch: controls.KillSwitch) -> None:
        """Kill switch, risk, then send: every claimed signal ends settled, in doubt or handed
        back. A database error midway hands back at the next sweep what was never sent."""
        sent: set[int] = set()
        try:
            self._execute_claimed(claimed, epoch, switch, sent)
        except DB_ERRORS:
            self._unsent.setdefault(epoch, set()).update(c.id for c in claimed if c.id not in sent)
            raise

    def _execute_claimed(
        self, claimed: list[store.Claimed], epoch: int, switch: controls.KillSwitch, sent: set[int]
    ) -> None:
        if self._must_hand_back():
            self._requeue([c.id for c in claimed], epoch, HANDED_BACK)
            return
        if switch.halted:
            self._settle(epoch, [self._rejection(c.id, f"halted: {switch.describe()}") for c in claimed])
            return
        intents = [(c, intent_from_payload(c.payload)) for c in claimed]
        try:
            account = self._broker.account()
            self.beat()
            exposure = self._exposure()
            self.beat()
            quotes = self._quotes({i.symbol for _, i in intents})
        except BrokerError as e:
            # Nothing was sent: give the whole batch back, never leave it in doubt.
            self._breaker.record_failure("account")
            self._requeue([c.id for c in claimed], epoch, f"broker unavailable: {e}")
            return
        cap = risk_cap(account, self._limits)
        orders: list[Order] = []
        rejected: list[store.Settlement] = []
        held = self.held_symbols()
        for c, intent in intents:
            if intent.symbol in held:
                rejected.append(self._rejection(c.id, f"held {intent.symbol}: {held[intent.symbol]}"))
                continue
            quote = quotes[intent.symbol]
            try:
                if isinstance(quote, SymbolUnavailable):
                    raise RiskRejected("symbol_spec", str(quote))
                market = quote.executable(intent.side, intent.type, intent.price)
                sized = size_order(intent, account, exposure, quote.spec, self._limits, market, quote.margin_per_lot)
            except RiskRejected as r:
                rejected.append(self._rejection(c.id, f"risk {r.rule}: {r.detail}"))
                continue
            req = OrderRequest(
                tag=c.tag,
                symbol=intent.symbol,
                side=intent.side,
                type=intent.type,
                volume=sized.volume,
                price=intent.price,
                sl=intent.sl,
                tp=intent.tp,
                epoch=epoch,
                expires_at=intent.expires_at,
                max_loss=cap,
                quoted=market,
            )
            orders.append((c.id, req))
            # Counted before the venue answers, a pending order as much as a position: the
            # rest of the batch sees the most exposure there could be, never less.
            exposure += 1
            if sized.margin is not None and account.free_margin is not None:
                account = replace(account, free_margin=account.free_margin - sized.margin)
        self._settle(epoch, rejected)
        if not orders:
            return
        if self._broker.records_in_transaction:
            # A database venue books the whole batch in one fenced transaction, expiry inside it.
            self._place(orders, epoch, sent)
            return
        # Any other venue: one order at a time, each after its own hand-back, lease, kill
        # switch and expiry check.
        for i, order in enumerate(orders):
            self.beat()
            if i and self._must_hand_back():
                self._requeue([sid for sid, _ in orders[i:]], epoch, HANDED_BACK)
                return
            self._place([order], epoch, sent)

    def _must_hand_back(self) -> bool:
        return self._retired() or self._paused.is_set() or not self._breaker.allow()

    @staticmethod
    def _rejection(signal: int, error: str) -> store.Settlement:
        return store.Settlement(signal, SignalStatus.REJECTED, "rejected", error=error)

    def _lease_allows_send(self, epoch: int) -> bool:
        """An action at the venue under `epoch` only while its lease outlives the broker call."""
        try:
            fence = self._coord.fence(min_remaining_ms=self.cfg.broker_deadline_ms + self.cfg.drift_margin_ms)
        except NotLeader:
            return False
        return fence.epoch == epoch

    def _gate(self, signal: int, epoch: int) -> bool:
        """Stamp one order's attempt just before it goes; settle it instead if it expired or
        trading was halted meanwhile. True: send it."""
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            gate = store.stamp(cur, signal, epoch)
            switch = controls.read(cur, self.cfg.cluster) if gate is store.Gate.HALTED else None
        if switch is not None:
            self._settle(epoch, [self._rejection(signal, f"halted: {switch.describe()}")])
        elif gate is store.Gate.EXPIRED:
            expired = store.Settlement(signal, SignalStatus.EXPIRED, "expired", error="expired before it was sent")
            self._settle(epoch, [expired])
        return gate is store.Gate.SEND

    def _place(self, orders: list[Order], epoch: int, sent: set[int]) -> None:
        """One broker call for `orders` (one order, or a database venue's whole batch), then
        their outcomes: inside the booking transaction where the venue is the database."""
        ids = [sid for sid, _ in orders]
        if not self._lease_allows_send(epoch):
            self._requeue(ids, epoch, "lease too short to send; given back")
            return
        if not self._broker.records_in_transaction and not self._gate(ids[0], epoch):
            return
        sent.update(ids)
        recorded: list[tuple[list[store.Settlement], dict[int, float]]] = []

        def within(cur: psycopg.Cursor, results: list[OrderResult]) -> None:
            settled = settlements(orders, results)
            recorded.append((settled, store.record_outcomes(cur, epoch, self.cfg.instance_id, settled)))

        reqs = [req for _, req in orders]
        started = time.monotonic()
        try:
            if self._broker.records_in_transaction:
                results = cast(BookingVenue, self._broker).book(reqs, within)
            else:
                results = [self._broker.send(req) for req in reqs]
        except EpochSuperseded as e:
            # The venue refused a deposed leader: nothing was booked. The fact is kept; the
            # signals stay with their attempt for the new leader, which re-executes them.
            with self._pool.connection() as conn, conn.cursor() as cur:
                store.record_facts(cur, ids, epoch, self.cfg.instance_id, "fenced", str(e))
            log.warning("orders for %d signal(s) refused by the venue: %s", len(ids), e)
            return
        except BrokerError as e:
            sent.difference_update(ids)  # a BrokerError means nothing reached the venue
            self._breaker.record_failure()
            self._requeue(ids, epoch, f"broker unavailable: {e}")
            return
        if any(r.outcome is Outcome.UNKNOWN for r in results):
            self._breaker.record_failure()
        else:
            self._breaker.record_success((time.monotonic() - started) * 1000)
        if recorded:
            self._counted(*recorded[0])
            return
        outcomes = settlements(orders, results)
        try:
            self._settle(epoch, outcomes)
        except DB_ERRORS:
            self._unrecorded.append((epoch, outcomes))  # sent: recorded at the next sweep
            raise

    def _counted(self, settled: list[store.Settlement], latencies: dict[int, float]) -> None:
        """Count, log and alert the settlements that moved their signal. One whose status did
        not move (a newer attempt or an operator settled it first) is a kept fact, no event."""
        for s in settled:
            latency = latencies.get(s.signal)
            if latency is None:
                continue
            metrics.SIGNALS.labels(s.status.value).inc()
            metrics.SIGNAL_LATENCY.observe(latency)
            if s.status is SignalStatus.REJECTED:
                log.warning("signal %d rejected: %s", s.signal, s.error)
            elif s.status is SignalStatus.EXPIRED:
                log.error("signal %d expired before it was sent: %s", s.signal, s.error)
                self._alert("signal_expired", "error", f"signal {s.signal} expired: {s.error}", signal=s.signal)
            elif s.status is SignalStatus.IN_DOUBT:
                log.critical("signal %d in doubt after the broker call: %s", s.signal, s.error)
                self._alert("signal_in_doubt", "critical", f"signal {s.signal} in doubt: {s.error}", signal=s.signal)
                metrics.IN_DOUBT.inc()

    def _settle(self, epoch: int, settled: list[store.Settlement]) -> None:
        if not settled:
            return
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            latencies = store.record_outcomes(cur, epoch, self.cfg.instance_id, settled)
        self._counted(settled, latencies)

    def _requeue(self, signals: list[int], epoch: int, reason: str) -> None:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            store.requeue(cur, signals, epoch, self.cfg.instance_id, reason)
        self._wake.set()

    # ---- in doubt ----

    def _resolve_unsettled(self, epoch: int) -> None:
        with self._pool.connection() as conn:
            pending = store.unsettled(conn, self.cfg.cluster, epoch, self.cfg.broker_deadline_ms)
        held = 0
        for u in pending:
            self.beat()
            if self._retired():
                return
            try:
                held += self._resolve(u, epoch)
            except BrokerError as e:
                # The venue cannot search tags now (unreachable, busy, a call of the tag still
                # on the terminal): nothing is decided; the next sweep asks again.
                log.warning("in-doubt resolution of signal %s deferred: %s", u.fingerprint, first_line(e))
                return
        metrics.IN_DOUBT.set(held)

    def _scan_duplicates(self, epoch: int) -> None:
        if self._broker.fencing_aware:
            return  # a tag is booked at most once there
        try:
            self._duplicates.scan(epoch)
        except BrokerError as e:
            log.warning("duplicate scan skipped: %s", e)

    def _resolve(self, u: store.Unsettled, epoch: int) -> int:
        """Settle one attempt an earlier epoch left (or a held one). Returns 1 if still held."""
        venue = self._broker
        held = 1 if u.status == SignalStatus.IN_DOUBT else 0
        if not venue.fencing_aware and u.attempt_age_ms < self.cfg.grace_ms:
            return held  # a paused ex-leader or a timed-out call may still send: wait out the grace
        try:
            found = venue.find_by_tag(u.tag)
        except TagInDoubt as e:
            # A fencing-aware venue that cannot tell (its attempt got no answer) never re-sends
            # the tag: hold it like an absent tag at a venue that cannot fence.
            return self._hold(u, f"{e}; held")
        if found:
            first, *dupes = sorted(found, key=lambda o: (o.at is None, o.at, o.ticket))
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                done = store.settle_held(
                    cur,
                    u.id,
                    u.status,
                    u.epoch,
                    SignalStatus.EXECUTED,
                    self.cfg.instance_id,
                    None,
                    f"found at the broker as ticket {first.ticket}",
                    ref=first.ticket,
                )
            if done:
                metrics.SIGNALS.labels("executed").inc()
                log.warning("signal %s settled from the broker: ticket %s", u.fingerprint, first.ticket)
            for d in dupes:
                self._duplicates.compensate(u.fingerprint, first.ticket, d, epoch)
            return 0
        # At a fencing-aware venue an absent tag is final (the attempt's epoch can no longer
        # book, and a late commit of the same tag would be refused as a duplicate): re-execute.
        if venue.fencing_aware or self.cfg.in_doubt_policy == "reexecute":
            with self._pool.connection() as conn, self._coord.fenced(conn) as (cur, fence):
                if fence.epoch != epoch:  # one epoch throughout: the take-over and its send
                    raise NotLeader(f"epoch {epoch} ended during in-doubt resolution")
                taken = store.take_over(
                    cur, u.id, u.status, u.epoch, epoch, self.cfg.instance_id, "re-executing: tag absent"
                )
                switch = controls.read(cur, self.cfg.cluster)
            if taken:
                self._execute([store.Claimed(u.id, u.fingerprint, u.tag, u.payload)], epoch, switch)
            return 0
        return self._hold(u, "tag absent at the broker after the grace period; held (HAEXEC_IN_DOUBT=hold)")

    def _hold(self, u: store.Unsettled, reason: str) -> int:
        """Hold a signal in doubt (once: logged, counted and alerted when it moves). Returns 1."""
        if u.status == SignalStatus.IN_DOUBT:
            return 1  # held until its tag turns up or an operator settles it
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            held = store.settle_held(
                cur, u.id, u.status, u.epoch, SignalStatus.IN_DOUBT, self.cfg.instance_id, None, reason
            )
        if held:
            metrics.SIGNALS.labels("in_doubt").inc()
            log.critical("signal %s held in doubt: %s", u.fingerprint, reason)
            self._alert(
                "signal_in_doubt",
                "critical",
                f"signal {u.fingerprint} held in doubt",
                fingerprint=u.fingerprint,
            )
        return 1
