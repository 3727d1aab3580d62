"""The position manager: a reconciler on the leader that keeps every managed position's stop
at the venue where its rules want it.

Each loop (every `period_ms`, at most `budget_ms` of work):
1. the managed book from plan_execution_state, the venue's positions ONCE, one tick per
   symbol;
2. recovery: a venue position not in the book is registered when its tag is a signal's
   (`fill`, or `adopted` on the first loop: it predates this leader), foreign ones are
   reported only (unless manage_external); a book position gone from the venue is closed
   from the venue's closing deal, or, with no deal, alerted CRITICAL and its symbol held;
   the venue's volume wins;
3. per position: the stop the rules decide from the stored state and the tick; the
   database's verified stop is reasserted when the venue's is looser; the fail-safe passes
   every change before it is sent (a refusal is counted and journalled, never sent);
4. the differences are sent in urgency order (closest to its stop first), up to
   `max_in_flight` at once where the venue allows it, each fenced by the epoch;
5. a second read of the venue verifies what was sent;
6. a partial close the rules ask for (once per position, at its target) is sent after its
   intent is committed (the state says it is done before the venue is asked), so a new
   leader never sends it again; a refusal makes it due again a minute later, an unknown
   answer never (the venue's volume, next loop, says whether it happened);
7. the stops, the state and the journal rows commit in one fenced transaction.

The guarantee: a position with no stop at the venue gets its desired stop (at least the
initial one) at once; still none `sl_deadline_ms` after it was first seen naked, it is
closed (naked_policy close) or alerted only (alert), CRITICAL either way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from common.clock import SYSTEM_CLOCK, Clock
from common.errors import first_line
from coordinator.elector import Fence
from coordinator.fencing import EpochSuperseded, NotLeader
from engine.brokers.base import Broker, BrokerError, OrderResult, Outcome, Position, SymbolSpec
from engine.market.base import Bars, MarketDataError, MarketSpec, Tick, Timeframe
from engine.model import Side
from engine.positions import failsafe, indicators, rules, store
from engine.positions.fallback import Fallback
from engine.positions.metrics import PositionMetrics, default_metrics
from engine.positions.sender import COOL_OFF_MS, Answer, Item, Sender, Sent
from engine.risk import RiskLimits, risk_cap

log = logging.getLogger("haexec.engine.positions")

DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
Alert = Callable[..., None]
# The alert kinds this module emits (haexec.alerts carries them as strings).
NAKED_POSITION = "position_without_stop"
POSITION_VANISHED = "position_vanished"
ACCOUNT_REFRESH_MS = 5000.0
PARTIAL_RETRY_MS = 60_000.0  # a refused partial close is due again after this
SWING_BARS = 200  # the bars searched for the last confirmed swing


class Fencing(Protocol):
    """What the manager needs of the coordinator (engine.executor.Fencing's two calls)."""

    def fence(self, min_remaining_ms: float = 0.0) -> Fence: ...

    def fenced(self, conn: psycopg.Connection) -> AbstractContextManager[tuple[psycopg.Cursor, Fence]]: ...


class Prices(Protocol):
    """The replica's engine.market Market, as far as the manager reads it."""

    def tick(self, symbol: str, *, max_age_ms: int) -> Tick: ...

    def spec(self, symbol: str) -> MarketSpec: ...

    def bars(self, symbol: str, timeframe: Timeframe | str, count: int, *, max_age_ms: int) -> Bars: ...


@dataclass(frozen=True)
class Rules:
    """The rules and the fail-safe, injectable (defaults: the real ones)."""

    decide: Callable[..., rules.Decision] = rules.decide
    check: Callable[..., failsafe.Verdict] = failsafe.check
    parse: Callable[[Any], rules.ManageRules] = rules.parse_manage
    load_state: Callable[[Mapping[str, Any]], rules.TrailState] = rules.TrailState.from_json
    dump_state: Callable[[rules.TrailState], dict[str, Any]] = rules.TrailState.to_json


@dataclass(frozen=True)
class ManagerConfig:
    cluster: str
    instance_id: str
    account: str
    period_ms: int = 100
    budget_ms: int = 1000
    call_deadline_ms: int = 1500  # the lease must outlive a call at a venue that cannot fence
    sl_deadline_ms: int = 1000
    naked_policy: str = "close"
    manage_external: bool = False
    reconcile_s: int = 60
    max_in_flight: int = 3  # 1 where the venue serialises (MT5)
    max_tick_age_ms: int = 5000
    cool_off_ms: float = COOL_OFF_MS
    default_rules: Mapping[str, Any] = field(default_factory=dict)
    # Where a close the database could not take is kept until it can (None: not kept, the
    # next loop finds the close at the venue again).
    fallback_path: Path | None = None


@dataclass
class LoopReport:
    positions: int = 0
    sent: int = 0
    verified: int = 0
    refused: int = 0
    failed: int = 0
    deferred: int = 0
    naked: int = 0
    closed: int = 0
    adopted: int = 0
    over_budget: int = 0  # changes left for the next loop
    partials: int = 0  # partial closes done


@dataclass
class _Step:
    """One position's work in this loop."""

    row: store.Managed
    pos: Position
    spec: MarketSpec | None
    risk_spec: SymbolSpec | None
    price: Decimal | None
    state: rules.TrailState | None
    target: Decimal | None  # the stop to send, None: nothing to send
    why: tuple[str, ...] = ()
    desired: Decimal | None = None
    sent: Decimal | None = None
    verified: Decimal | None = None
    volume: Decimal = Decimal(0)
    just_sent: bool = False
    partial: Decimal | None = None  # lots to close now (the rules' partial, at its target)
    journal: list[store.Entry] = field(default_factory=list)

    @property
    def urgency(self) -> Decimal:
        """How far the price is from the venue's stop, relative to it (0: at it, naked first)."""
        if self.pos.sl is None or self.price is None:
            return Decimal(-1)
        gap = self.price - self.pos.sl if self.pos.side is Side.BUY else self.pos.sl - self.price
        return gap / self.price


def _as_saved(row: store.Managed) -> store.Saved:
    return store.Saved(
        row.ticket,
        row.desired_sl,
        row.sent_sl,
        row.verified_sl,
        row.state,
        row.trailing_mode_enabled,
        row.current_rr,
        row.high_water,
        row.volume,
        row.naked_since is not None,
    )


def _partial_result(result: OrderResult) -> str:
    return {Outcome.DONE: "done", Outcome.REJECTED: "refused"}.get(result.outcome, "unknown")


def _kind(why: tuple[str, ...], was: Decimal | None) -> str:
    if was is None:
        return "stop_set"
    for word in ("breakeven", "lock", "trailing"):
        if any(w.startswith(word) for w in why):
            return word
    return "stop_moved"


def tighter(side: Side, a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b) if side is Side.BUY else min(a, b)


class PositionManager:
    def __init__(
        self,
        cfg: ManagerConfig,
        fencing: Fencing,
        pool: ConnectionPool,
        broker: Broker,
        market: Prices | None,
        risk_limits: RiskLimits,
        alert: Alert | None = None,
        beat: Callable[[], None] | None = None,
        rules_api: Rules | None = None,
        clock: Clock = SYSTEM_CLOCK,
        metrics: PositionMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self._fencing = fencing
        self._pool = pool
        self._broker = broker
        self.market = market
        self._limits = risk_limits
        self._alert = alert or (lambda *a, **k: None)
        self.beat = beat or (lambda: None)
        self._rules = rules_api or Rules()
        self._clock = clock
        self.metrics = metrics or default_metrics()
        self._sender = Sender(broker, clock, self._venue_epoch, cfg.cool_off_ms)
        self._fallback = Fallback(cfg.fallback_path) if cfg.fallback_path is not None else None
        self._naked_since: dict[str, float] = {}  # ticket -> monotonic ms first seen without a stop
        self._alerted: set[str] = set()  # tickets alerted naked / vanished (once each)
        self._foreign: set[str] = set()  # foreign tickets reported
        self._partial_warned: set[str] = set()  # tickets told once that the venue cannot close a part
        self._partial_after: dict[str, float] = {}  # ticket -> when a refused partial is due again
        self._ignored: set[str] = set()  # foreign or unregistered: not looked up again every loop
        self._refused: dict[str, Decimal] = {}  # ticket -> the last stop the fail-safe refused
        self._parsed: dict[str, tuple[dict[str, Any], rules.ManageRules]] = {}
        self._book: dict[str, store.Managed] = {}  # the rows as last read or saved, by ticket
        self._loop_cache: dict[tuple[Any, ...], Decimal | None] = {}  # indicator readings, one loop
        self._account_at = float("-inf")
        self._max_loss: Decimal | None = None
        self._reported_at = float("-inf")
        # ticket -> (its symbol, why): a position in the book that the venue neither has nor
        # has a closing deal for holds new trading on its symbol
        self._holds: dict[str, tuple[str, str]] = {}
        self._first_loop = True
        self._epoch: int | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool_exec: ThreadPoolExecutor | None = None
        self.last_report: LoopReport | None = None
        self.last_error: str | None = None

    # ---- lifecycle: started on becoming leader, stopped on losing it ----

    def start(self) -> None:
        """A new term: a fresh thread (a previous term's thread, told to stop, finishes its
        loop on its own event and never works for this term)."""
        self._stop.set()
        self._stop = stop = threading.Event()
        self._first_loop = True  # a new term begins with a stop audit of every position
        # What the last term found is found again (and alerted again) by this one's audit.
        self._holds, self._alerted, self._book = {}, set(), {}
        self._thread = threading.Thread(target=self._run, args=(stop,), name="haexec-positions", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A tick arrived: loop now rather than at the end of the period (a market
        subscription calls this; any thread)."""
        self._wake.set()

    def stop(self, timeout_s: float = 0.0) -> None:
        """Never waits on the venue by default: the leadership callback calls this."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and timeout_s > 0:
            thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def on_started_leading(self, epoch: int) -> None:
        self.start()

    def on_stopped_leading(self, epoch: int, reason: str) -> None:
        self.stop()

    def health(self) -> str:
        if self.last_error is not None:
            return f"failing: {self.last_error}"
        if self.held_symbols:
            return "held: " + ", ".join(f"{s} ({why})" for s, why in sorted(self.held_symbols.items()))
        return "ok"

    def _run(self, stop: threading.Event) -> None:
        period_s = self.cfg.period_ms / 1000.0
        while not stop.is_set():
            self.beat()
            try:
                self.run_once()
                self.last_error = None
            except (NotLeader, EpochSuperseded) as e:
                log.warning("position manager: not leader: %s", first_line(e))
                return
            except (*DB_ERRORS, BrokerError) as e:
                self.last_error = first_line(e)
                log.error("position manager loop failed: %s", self.last_error)
            except Exception as e:  # a fault in a loop must not end the guarantee: next loop
                self.last_error = first_line(e)
                log.exception("position manager loop fault")
            # The period is the longest wait; a tick (wake) cuts it short.
            self._wake.wait(period_s)
            self._wake.clear()

    # ---- one loop ----

    def run_once(self) -> LoopReport:
        started = self._clock.now_ms()
        fence = self._fencing.fence()
        self._epoch = fence.epoch
        report = LoopReport()
        self._loop_cache = {}
        self._replay_fallback()  # what the database could not take before, first
        audit, self._first_loop = self._first_loop, False
        with self._pool.connection() as conn:
            book = store.load_changed(conn, self.cfg.cluster, self.cfg.account, self._book)
        self._book = {r.ticket: r for r in book}
        venue = self._broker.positions()
        at_venue = {p.ticket: p for p in venue}
        in_book = {r.ticket for r in book}
        unknown = [p for p in venue if p.ticket not in in_book and p.ticket not in self._ignored]
        if unknown:
            book += self._adopt(unknown, audit, report)
        self._vanished([r for r in book if r.ticket not in at_venue], report)
        steps = self._plan([r for r in book if r.ticket in at_venue], at_venue, report)
        self._send(steps, started, report)
        self._verify(steps, report)
        self._partials(steps, report)
        self._persist(steps)
        if audit:
            log.warning(
                "stop audit at epoch %d: %d positions, %d without a stop, %d adopted",
                fence.epoch,
                report.positions,
                report.naked,
                report.adopted,
            )
        self._report_now(report)
        took_s = (self._clock.now_ms() - started) / 1000.0
        self.metrics.loop.observe(took_s)
        self.last_report = report
        return report

    def _venue_epoch(self) -> int | None:
        """The epoch a call is sent with. A venue that fences in its own transaction (paper)
        checks it there; one that cannot (MT5) is called only while the lease outlives it."""
        if self._broker.fencing_aware:
            assert self._epoch is not None
            return self._epoch
        return self._fencing.fence(min_remaining_ms=self.cfg.call_deadline_ms).epoch

    def _max_loss_now(self) -> Decimal | None:
        now = self._clock.now_ms()
        if now - self._account_at >= ACCOUNT_REFRESH_MS:
            try:
                account = self._broker.account()
            except BrokerError as e:
                log.warning("position manager: account unavailable, keeping the last cap: %s", first_line(e))
            else:
                self._max_loss = risk_cap(account, self._limits) * self._limits.safety_margin
                self._account_at = now
        return self._max_loss

    def _rules_of(self, row: store.Managed) -> rules.ManageRules:
        cached = self._parsed.get(row.ticket)
        if cached is None or cached[0] != row.rules:
            cached = self._parsed[row.ticket] = (row.rules, self._rules.parse(row.rules))
        return cached[1]

    # ---- recovery ----

    def _adopt(self, unknown: list[Position], audit: bool, report: LoopReport) -> list[store.Managed]:
        """Register the venue positions that are haexec's (their tag is a signal's); report
        the foreign ones, or adopt them too with manage_external."""
        cfg = self.cfg
        with self._pool.connection() as conn:
            known = store.known_tickets(conn, cfg.cluster, cfg.account)
            fresh = [p for p in unknown if p.ticket not in known]  # unregistered ones stay unmanaged
            self._ignored.update(p.ticket for p in unknown if p.ticket in known)
            signals = store.signals_by_tag(conn, cfg.cluster, [p.tag for p in fresh if p.tag])
        adopted: list[store.Managed] = []
        for p in fresh:
            signal = signals.get(p.tag) if p.tag else None
            if signal is None and not cfg.manage_external:
                self._ignored.add(p.ticket)
                if p.ticket not in self._foreign:
                    self._foreign.add(p.ticket)
                    log.warning("position %s (%s %s) is not haexec's: reported, not managed", p.ticket, p.symbol, p.tag)
                continue
            fingerprint, manage = signal if signal is not None else (None, None)
            initial = p.sl
            if initial is None:
                initial = self._signal_sl(fingerprint)
            if initial is None:
                if p.ticket not in self._foreign:
                    self._foreign.add(p.ticket)
                    log.error("position %s has no stop and no signal stop: cannot define its risk", p.ticket)
                continue
            new = store.NewPosition(
                ticket=p.ticket,
                symbol=p.symbol,
                side=p.side,
                entry=p.price,
                initial_sl=initial,
                volume=p.volume,
                source="signal" if signal is not None else "api",
                rules=manage if manage is not None else dict(cfg.default_rules),
                fingerprint=fingerprint,
            )
            kind = "adopted" if audit or signal is None else "fill"
            with self._pool.connection() as conn, self._fencing.fenced(conn) as (cur, fence):
                try:
                    row, _ = store.register(cur, cfg.cluster, cfg.account, new, (fence.epoch, cfg.instance_id, kind))
                except store.Registered as e:  # registered meanwhile (POST /trades): theirs stands
                    row = e.existing
            if row.managed:
                adopted.append(row)
                report.adopted += 1
        return adopted

    def _signal_sl(self, fingerprint: str | None) -> Decimal | None:
        if fingerprint is None:
            return None
        with self._pool.connection() as conn:
            row = conn.execute(store.SIGNAL_SL_SQL, (self.cfg.cluster, fingerprint)).fetchone()
        return None if row is None or row[0] is None else Decimal(str(row[0]))

    def _vanished(self, gone: list[store.Managed], report: LoopReport) -> None:
        """In the book, not at the venue: closed (from its deal), or held and alerted."""
        deals = getattr(self._broker, "closing_deal", None)
        for row in gone:
            try:
                deal = deals(row.ticket) if deals is not None else None
            except BrokerError as e:
                # Held, not a failed loop: the other positions' stops must not wait on one
                # position's history. Asked again next loop.
                self._hold(row, f"absent at the venue; its deals cannot be read: {first_line(e)}")
                continue
            if deal is None:
                self._hold(row, "absent at the venue with no closing deal")
                continue
            self._record_close(row, deal.at, {"by": deal.kind, "price": deal.price, "pnl": deal.pnl})
            report.closed += 1
            if self._holds.pop(row.ticket, None) is not None:
                # A venue whose deal history lags its positions (an MT5 terminal can): the
                # close is known now, and only this ticket's hold goes with it.
                log.warning("position %s: its closing deal arrived; its hold on %s is lifted", row.ticket, row.symbol)

    @property
    def held_symbols(self) -> dict[str, str]:
        """symbol -> why new trading on it is held (the executor refuses a signal on it)."""
        out: dict[str, str] = {}
        for ticket, (symbol, why) in sorted(self._holds.items()):
            out[symbol] = f"{out[symbol]}; " if symbol in out else ""
            out[symbol] += f"ticket {ticket} {why}"
        return out

    def _hold(self, row: store.Managed, why: str) -> None:
        self._holds[row.ticket] = (row.symbol, why)
        if row.ticket in self._alerted:
            return
        self._alerted.add(row.ticket)
        message = f"position {row.ticket} ({row.symbol}) {why}: new trading on {row.symbol} held"
        log.critical(message)
        self._alert(POSITION_VANISHED, "critical", message, ticket=row.ticket, symbol=row.symbol)

    def _record_close(self, row: store.Managed, at: Any, detail: Mapping[str, Any]) -> None:
        # A fact: recorded even if this replica has just lost leadership. It cannot share a
        # transaction with the venue's close, so a database that does not take it is tried
        # 3 times within a second, then the fact is kept in the fallback file for replay.
        fact = {"ticket": row.ticket, "at": at, "epoch": self._epoch, "detail": dict(detail)}
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(3), wait=wait_fixed(0.3), retry=retry_if_exception_type(DB_ERRORS), reraise=True
            ):
                with attempt:
                    self._apply_close(fact)
        except DB_ERRORS as e:
            if self._fallback is None:
                raise
            self._fallback.append(fact)
            self.metrics.journal_fallbacks.inc()
            log.error("close of %s kept in %s: the database did not take it (%s)", row.ticket, self._fallback.path, e)
        self._forget(row.ticket)

    def _apply_close(self, fact: Mapping[str, Any]) -> None:
        """Record a close (idempotent: store.close records it once), from a loop or a replay."""
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            store.close(
                cur,
                self.cfg.cluster,
                self.cfg.account,
                str(fact["ticket"]),
                fact["at"],
                fact["epoch"],
                self.cfg.instance_id,
                fact["detail"],
            )

    def _replay_fallback(self) -> None:
        if self._fallback is not None and self._fallback.path.exists():
            done = self._fallback.replay(self._apply_close)
            if done:
                log.warning("replayed %d kept close(s) from %s into the journal", done, self._fallback.path)

    def _forget(self, ticket: str) -> None:
        self._naked_since.pop(ticket, None)
        self._refused.pop(ticket, None)
        self._parsed.pop(ticket, None)
        self._sender.forget(ticket)

    # ---- deciding ----

    def _plan(self, book: list[store.Managed], at_venue: dict[str, Position], report: LoopReport) -> list[_Step]:
        read: dict[str, tuple[Tick | None, MarketSpec | None, SymbolSpec | None]] = {}
        max_loss = self._max_loss_now()
        now = self._clock.now_ms()
        steps = []
        for row in book:
            pos = at_venue[row.ticket]
            if row.symbol not in read:
                read[row.symbol] = self._read(row.symbol)
            tick, spec, risk_spec = read[row.symbol]
            price = None if tick is None else (tick.bid if row.side is Side.BUY else tick.ask)
            step = _Step(row, pos, spec, risk_spec, price, None, None, volume=pos.volume)
            step.desired, step.sent, step.verified = row.desired_sl, row.sent_sl, row.verified_sl
            if pos.volume != row.volume:  # the venue wins
                step.journal.append(store.Entry(row.ticket, "partial", {"volume": pos.volume, "was": row.volume}))
            report.positions += 1
            self._decide(step, max_loss)
            if pos.sl is None:
                report.naked += 1
                first = self._naked_since.setdefault(row.ticket, now)
                if first == now:
                    step.journal.append(store.Entry(row.ticket, "naked", {"desired": step.target}))
                if now - first >= self.cfg.sl_deadline_ms and self._deadline_passed(step, now - first, report):
                    continue
            else:
                self._naked_since.pop(row.ticket, None)
                self._alerted.discard(row.ticket)
            steps.append(step)
        self.metrics.without_sl.set(report.naked)
        self.metrics.managed.set(report.positions)
        return steps

    def _read(self, symbol: str) -> tuple[Tick | None, MarketSpec | None, SymbolSpec | None]:
        """The symbol's tick and spec (once per loop), and the spec the fail-safe prices a
        stop with: the market's, or the venue's own where there is no market."""
        if self.market is None:
            try:
                return None, None, self._broker.quote(symbol).spec
            except BrokerError as e:
                log.warning("position manager: no spec for %s: %s", symbol, first_line(e))
                return None, None, None
        try:
            spec = self.market.spec(symbol)
            risk = SymbolSpec.from_market(spec)
        except (MarketDataError, TypeError, ValueError) as e:
            log.warning("position manager: no spec for %s: %s", symbol, first_line(e))
            return None, None, None
        try:
            return self.market.tick(symbol, max_age_ms=self.cfg.max_tick_age_ms), spec, risk
        except MarketDataError as e:  # no fresh price: no rule moves, the guarantee still holds
            log.warning("position manager: no fresh tick for %s: %s", symbol, first_line(e))
            return None, spec, risk

    def _decide(self, step: _Step, max_loss: Decimal | None) -> None:
        row, pos, spec = step.row, step.pos, step.spec
        # The database wins over a looser stop at the venue; a tighter one there stands (a
        # stop never loosens).
        floor = tighter(row.side, row.verified_sl, row.initial_sl if pos.sl is None else None)
        current = tighter(row.side, pos.sl, floor)
        assert current is not None  # the initial stop at the least
        target: Decimal = current
        why: tuple[str, ...] = ()
        if step.price is not None and spec is not None:
            held = rules.Held(
                row.ticket,
                row.symbol,
                row.side,
                row.entry,
                row.initial_sl,
                pos.volume,
                spec.point,
                spec.volume_step,
                spec.volume_min,
            )
            state = self._rules.load_state(row.state) if row.state else rules.TrailState()
            manage = self._rules_of(row)
            atr, swing = self._indicators(manage, row.symbol, row.side)
            decision = self._rules.decide(held, manage, state, step.price, current, atr, swing)
            step.state = decision.state
            if decision.partial_volume is not None:
                self._partial_due(step, decision.partial_volume)
            target, why = tighter(row.side, decision.stop, current) or current, decision.why
        step.desired = target
        if pos.sl is not None and target == pos.sl:
            return
        if step.risk_spec is None or max_loss is None:
            log.error("position %s: no spec or no risk cap to check stop %s by: not sent", row.ticket, target)
            return
        verdict = self._rules.check(row.side, row.entry, pos.volume, pos.sl, target, step.risk_spec, max_loss)
        if not verdict.allowed:
            self.metrics.sl_updates.labels("refused").inc()
            if self._refused.get(row.ticket) != target:  # journalled once per refused stop, counted each time
                self._refused[row.ticket] = target
                step.journal.append(store.Entry(row.ticket, "refused", {"stop": target, "why": verdict.reason}))
                log.error("fail-safe refused stop %s for %s: %s", target, row.ticket, verdict.reason)
            return
        step.target, step.why = target, why

    def _partial_due(self, step: _Step, volume: Decimal) -> None:
        """The rules reached a partial's target (their state now says done)."""
        ticket = step.row.ticket
        if not hasattr(self._broker, "close_partial"):
            if ticket not in self._partial_warned:  # asked for once: the state keeps it done
                self._partial_warned.add(ticket)
                log.error("position %s: the venue cannot close part of a position: %s not closed", ticket, volume)
            return
        if self._clock.now_ms() < self._partial_after.get(ticket, float("-inf")):
            assert step.state is not None
            step.state = replace(step.state, partial_done=False)  # due, not yet: refused a moment ago
            return
        step.partial = volume

    def _partials(self, steps: list[_Step], report: LoopReport) -> None:
        for step in steps:
            if step.partial is None:
                continue
            row, volume = step.row, step.partial
            # The intent first: committed as done, so neither this leader nor the next sends it
            # again, whatever happens to the answer. A crash before the call loses the partial
            # (logged nowhere but here): never closing a part twice is the side to err on.
            self._save([step])
            try:
                result = self._broker.close_partial(row.ticket, volume, self._venue_epoch())  # type: ignore[attr-defined]
            except BrokerError as e:
                result = OrderResult(Outcome.UNKNOWN, detail=first_line(e))
            self.metrics.partials.labels(_partial_result(result)).inc()
            if result.outcome is Outcome.DONE:
                report.partials += 1
                step.volume = step.pos.volume - volume
                step.journal.append(
                    store.Entry(
                        row.ticket, "partial", {"closed": volume, "was": step.pos.volume, "price": result.price}
                    )
                )
                log.info("position %s: %s of %s closed at %s (partial)", row.ticket, volume, step.pos.volume,
                         result.price)  # fmt: skip
            elif result.outcome is Outcome.REJECTED:  # nothing happened at the venue: due again later
                assert step.state is not None
                step.state = replace(step.state, partial_done=False)
                self._partial_after[row.ticket] = self._clock.now_ms() + PARTIAL_RETRY_MS
                log.warning("position %s: partial close of %s refused: %s", row.ticket, volume, result.detail)
            else:
                log.error(
                    "position %s: partial close of %s unknown (%s): not sent again; the venue's volume tells",
                    row.ticket,
                    volume,
                    result.detail,
                )

    def _indicators(self, manage: rules.ManageRules, symbol: str, side: Side) -> tuple[Decimal | None, Decimal | None]:
        """The ATR and the last swing a trailing rule reads, from closed bars, once per
        (symbol, timeframe) per loop. None when the rule needs none or the bars are not there
        (the rule then does not trail: it never guesses)."""
        trailing = manage.trailing
        if trailing is None or self.market is None:
            return None, None
        atr = swing = None
        if trailing.atr_multiple is not None and trailing.atr_timeframe is not None:
            key: tuple[Any, ...] = ("atr", symbol, trailing.atr_timeframe.name, trailing.atr_period)
            if key not in self._loop_cache:
                bars = self._bars(symbol, trailing.atr_timeframe, indicators.atr_bars(trailing.atr_period))
                self._loop_cache[key] = None if bars is None else indicators.atr(bars, trailing.atr_period)
            atr = self._loop_cache[key]
        if trailing.swing_timeframe is not None:
            key = ("swing", symbol, trailing.swing_timeframe.name, trailing.swing_bars, side.value)
            if key not in self._loop_cache:
                bars = self._bars(symbol, trailing.swing_timeframe, SWING_BARS)
                self._loop_cache[key] = None if bars is None else indicators.last_swing(bars, trailing.swing_bars, side)
            swing = self._loop_cache[key]
        return atr, swing

    def _bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars | None:
        assert self.market is not None
        try:
            return self.market.bars(symbol, timeframe, count, max_age_ms=self.cfg.max_tick_age_ms)
        except MarketDataError as e:
            log.warning("position manager: no %s bars for %s: %s", timeframe.name, symbol, first_line(e))
            return None

    def _deadline_passed(self, step: _Step, naked_ms: float, report: LoopReport) -> bool:
        """Alert (once) and, by policy, close. True when it closed."""
        row = step.row
        action = "closing it" if self.cfg.naked_policy == "close" else "alert only"
        message = f"position {row.ticket} ({row.symbol}) has had no stop for {naked_ms:.0f} ms: {action}"
        if row.ticket not in self._alerted:
            self._alerted.add(row.ticket)
            log.critical(message)
            self._alert(NAKED_POSITION, "critical", message, ticket=row.ticket, symbol=row.symbol)
        if self.cfg.naked_policy != "close":
            return False
        try:
            result = self._broker.close_position(row.ticket, self._venue_epoch())
        except BrokerError as e:
            log.critical("closing naked position %s failed: %s", row.ticket, first_line(e))
            return False
        if result.outcome is not Outcome.DONE:
            log.critical("closing naked position %s refused: %s", row.ticket, result.detail)
            return False
        self.metrics.naked_closed.inc()
        self._record_close(row, None, {"by": "naked", "price": result.price, "naked_ms": round(naked_ms)})
        report.closed += 1
        return True

    # ---- sending ----

    def _send(self, steps: list[_Step], started: float, report: LoopReport) -> None:
        todo = sorted((s for s in steps if s.target is not None), key=lambda s: s.urgency)
        todo = [s for s in todo if not self._sender.blocked(s.row.ticket)]
        budget_end = started + self.cfg.budget_ms
        if self._sender.batches and todo:  # one venue call (and transaction) for the loop's stops
            self._send_batch(todo, report)
            self.metrics.open_circuits.set(self._sender.open_circuits())
            return
        if self._pool_exec is None and self.cfg.max_in_flight > 1 and len(todo) > 1:
            self._pool_exec = ThreadPoolExecutor(self.cfg.max_in_flight, thread_name_prefix="haexec-sl")
        if self._pool_exec is None or len(todo) <= 1:
            for s in todo:
                if self._clock.now_ms() >= budget_end:
                    report.over_budget += 1
                    continue
                self._send_one(s, report)
        else:
            futures = []
            for s in todo:
                if self._clock.now_ms() >= budget_end:
                    report.over_budget += 1
                    continue
                futures.append(self._pool_exec.submit(self._send_one, s, report))
            for f in futures:
                f.result()
        self.metrics.open_circuits.set(self._sender.open_circuits())

    @staticmethod
    def _item(step: _Step) -> Item:
        assert step.target is not None
        point = step.spec.point if step.spec is not None else Decimal(0)
        level = step.spec.stops_level if step.spec is not None else 0
        return Item(step.row.ticket, step.row.side, step.target, step.price, level, point)

    def _send_batch(self, steps: list[_Step], report: LoopReport) -> None:
        answers = self._sender.send_many([self._item(s) for s in steps])
        for s in steps:
            self._answered(s, answers[s.row.ticket], report)

    def _send_one(self, step: _Step, report: LoopReport) -> None:
        it = self._item(step)
        self._answered(step, self._sender.send(it.ticket, it.side, it.sl, it.price, it.stops_level, it.point), report)

    def _answered(self, step: _Step, answer: Answer, report: LoopReport) -> None:
        row = step.row
        if answer.outcome is Sent.SENT:
            step.sent, step.just_sent = answer.sl, True
            report.sent += 1
        elif answer.outcome is Sent.DEFERRED:
            self.metrics.sl_updates.labels("deferred").inc()
            report.deferred += 1
        elif answer.outcome is Sent.FAILED:
            self.metrics.sl_updates.labels("failed").inc()
            report.failed += 1
            log.error("stop %s for %s failed: %s", step.target, row.ticket, answer.detail)
        elif answer.outcome is Sent.GONE:
            step.target = None  # the next loop finds it gone and records the close from its deal
        if answer.outcome is not Sent.SENT:
            step.target = None

    def _verify(self, steps: list[_Step], report: LoopReport) -> None:
        """Read the venue back once (when anything was sent); a stop is verified when the
        venue has it."""
        sent = [s for s in steps if s.just_sent]
        venue = {p.ticket: p for p in self._broker.positions()} if sent else {}
        for s in steps:
            now_at = venue.get(s.row.ticket, s.pos)
            if now_at.sl is not None and now_at.sl == s.desired and s.verified != now_at.sl:
                s.verified = now_at.sl  # a stop the venue already had is verified as it is
            if not s.just_sent:
                continue
            if now_at.sl is not None and now_at.sl == s.sent:
                s.verified = now_at.sl
                report.verified += 1
                self.metrics.sl_updates.labels("ok").inc()
                s.journal.append(
                    store.Entry(
                        s.row.ticket, _kind(s.why, s.pos.sl), {"from": s.pos.sl, "to": now_at.sl, "why": list(s.why)}
                    )
                )
                self._naked_since.pop(s.row.ticket, None)
            else:
                self.metrics.sl_updates.labels("failed").inc()
                report.failed += 1
                log.error("stop %s for %s sent but the venue shows %s", s.sent, s.row.ticket, now_at.sl)

    # ---- persisting ----

    def _persist(self, steps: list[_Step]) -> None:
        self._save(steps, [e for s in steps for e in s.journal])

    def _save(self, steps: list[_Step], entries: list[store.Entry] | None = None) -> None:
        """The steps' rows as they differ from the book, and `entries`, in one fenced transaction."""
        saved = [new for s in steps if (new := self._saved(s)) != _as_saved(s.row)]
        if not saved and not entries:
            return
        with self._pool.connection() as conn, self._fencing.fenced(conn) as (cur, fence):
            versions = store.save(cur, self.cfg.cluster, self.cfg.account, saved)
            store.write_journal(cur, self.cfg.cluster, fence.epoch, self.cfg.instance_id, entries or [])
        self._remember(saved, versions)

    def _saved(self, s: _Step) -> store.Saved:
        row = s.row
        return store.Saved(
            row.ticket,
            s.desired,
            s.sent,
            s.verified,
            self._rules.dump_state(s.state) if s.state is not None else row.state,
            s.state.trailing_active if s.state is not None else row.trailing_mode_enabled,
            s.state.current_rr if s.state is not None else row.current_rr,
            s.state.high_water if s.state is not None else row.high_water,
            s.volume,
            s.pos.sl is None and s.verified is None,
        )

    def _remember(self, saved: list[store.Saved], versions: dict[str, datetime]) -> None:
        """The cached rows as this loop left them (committed), at their new versions, so the
        next loop need not read them again. The state is as the rules wrote it (JSON values:
        the rules write every leaf as a string), which is what a read would return."""
        for new in saved:
            cached = self._book.pop(new.ticket, None)
            at = versions.get(new.ticket)
            if cached is None or at is None:
                continue  # closed meanwhile, or not cached: the next loop reads it
            self._book[new.ticket] = replace(
                cached,
                desired_sl=new.desired_sl,
                sent_sl=new.sent_sl,
                verified_sl=new.verified_sl,
                state=dict(new.state),
                trailing_mode_enabled=new.trailing,
                current_rr=new.current_rr,
                high_water=new.high_water,
                volume=new.volume,
                naked_since=(cached.naked_since or datetime.now(UTC)) if new.naked else None,
                updated_at=at,
            )

    def _report_now(self, report: LoopReport) -> None:
        now = self._clock.now_ms()
        if now - self._reported_at < self.cfg.reconcile_s * 1000.0:
            return
        self._reported_at = now
        self._ignored.clear()  # looked at afresh once a reconcile period
        log.info(
            "positions: %d managed, %d without a stop, %d foreign (reported), %d symbols held",
            report.positions,
            report.naked,
            len(self._foreign),
            len(self.held_symbols),
        )
