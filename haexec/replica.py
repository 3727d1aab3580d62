"""One replica: the coordinator, the HTTP surface, the market data and the engine, wired
together.

Start-up is all or nothing: Redis reachable, database reachable and at schema head, the
market data source open, HTTP port bound, or the replica exits 1 with one line (2 for a
replay file or symbol list that cannot be used). It never serves half-started.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psycopg
import psycopg_pool
import redis
from filelock import FileLock, Timeout
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from common.errors import first_line
from coordinator.lease import redis_client
from coordinator.redis_url import redact_redis_url
from coordinator.service import Coordinator
from db import migrate
from db.session import SessionLimits, make_pool
from db.urls import redact
from engine import audit
from engine.breaker import BreakerState, CircuitBreaker
from engine.brokers.base import Broker, BrokerError, BrokerUnavailable
from engine.brokers.paper import PaperBroker
from engine.executor import Executor, ExecutorConfig
from engine.loop_restarts import PgRestartLog
from engine.market import FeedUnavailable, Market
from engine.market.feed import FeedRunner
from engine.market.watch import FeedWatch
from engine.plans.runner import PlanRunner, RunnerConfig
from engine.positions.wakeup import BookListener
from engine.reconcile import RECONCILE_TIMEOUT_MS, reconcile
from engine.supervision import Supervisor
from haexec.alerts import (
    CRITICAL,
    INFO,
    LEADERSHIP_CHANGE,
    LOOP_FAILED,
    LOOP_RESTARTED,
    SPLIT_BRAIN,
    WARNING,
    Alerts,
    NullSink,
    on_breaker_change,
)
from haexec.http import HttpServer, build_app
from haexec.positions import build_manager, build_registrar
from haexec.settings import Settings

log = logging.getLogger("haexec.replica")


class StartupError(Exception):
    """Start-up failed for an expected reason; the message is the one line to print."""


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """The configured URLs, or those of the embedded servers (started and migrated if needed)."""
    if not settings.embedded:
        assert settings.redis_url and settings.database_url
        return settings.redis_url, settings.database_url
    from embedded import EmbeddedError, ensure_servers

    try:
        servers = ensure_servers(settings.state_dir)
    except EmbeddedError as e:
        raise StartupError(f"embedded servers: {e}") from None
    ensure_schema_head(servers.database_url, settings)
    return settings.redis_url or servers.redis_url, settings.database_url or servers.database_url


def ensure_schema_head(database_url: str, settings: Settings) -> None:
    """Embedded default only: migrate to head, one process at a time, unless this release
    cannot (a newer release migrated the state directory's database)."""
    try:
        with FileLock(str(settings.state_dir / "migrate.lock"), timeout=settings.startup_timeout_s):
            state = read_database(database_url, settings.startup_timeout_s)
            if state.problem() is None:
                return
            if not state.upgradable:
                raise StartupError(f"embedded {state.problem()}")
            log.warning("migrating embedded database to %s", migrate.head_revision())
            migrate.upgrade(database_url)
    except Timeout:
        raise StartupError("embedded servers: timed out waiting for another process to migrate") from None


def read_database(database_url: str, timeout_s: float) -> migrate.SchemaState:
    """The database's schema, retried while it cannot be reached (bounded by timeout_s)."""
    try:
        for attempt in _retrying(timeout_s, psycopg.OperationalError):
            with attempt:
                return migrate.schema_state(database_url)
    except psycopg.OperationalError as e:
        raise StartupError(
            f"database at {redact(database_url)} unreachable after {timeout_s:g}s: {first_line(e)}"
        ) from None
    except psycopg.Error as e:  # reached, but it refused the schema queries (a permission, say)
        raise StartupError(f"database at {redact(database_url)}: {first_line(e)}") from None
    raise AssertionError("unreachable: Retrying either returns or reraises")


def check_database(database_url: str, timeout_s: float) -> None:
    """Reachable (within timeout_s) and at this release's schema head, or StartupError."""
    problem = read_database(database_url, timeout_s).problem()
    if problem is not None:
        raise StartupError(problem)


def _retrying(timeout_s: float, *errors: type[BaseException]) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(errors),
        stop=stop_after_delay(timeout_s),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
        reraise=True,
    )


# How often the feed is pumped: the sim ticks every 250 ms, and with MT5 each pump is a read
# per watched symbol on the terminal's one thread, which orders share.
FEED_INTERVAL_S = 0.25

# Test-only fault (tests/drills/test_loop_failover.py): the named supervised loop crashes at
# every heartbeat while this replica leads. Never set it in production.
TEST_LOOP_FAULT_ENV = "HAEXEC_TEST_LOOP_FAULT"


# No loop's heartbeat period is shorter: on a starved machine (two cores shared with the
# drills' whole cluster) a 250 ms feed pump was seen to take 1.5 s, and a restart the loop did
# not need still spends a third of its hour's budget.
MIN_LOOP_PERIOD_MS = 1000


def executor_period_ms(settings: Settings) -> int:
    """The executor's heartbeat period: a sweep interval, or one broker call and one database
    round trip (the longest step between two heartbeats), whichever is longer."""
    engine = settings.engine
    return max(MIN_LOOP_PERIOD_MS, engine.sweep_ms, engine.broker_deadline_ms + settings.election.db_timeout_ms)


def feed_period_ms(settings: Settings) -> int:
    """The feed's: a pump interval, or one source call (an MT5 read has the broker's deadline)."""
    return max(MIN_LOOP_PERIOD_MS, round(FEED_INTERVAL_S * 1000), settings.engine.broker_deadline_ms)


def build_broker(settings: Settings, pool: ConnectionPool, market: Market | None = None) -> Broker:
    """The configured venue. The paper venue fills at `market`'s prices when given (a replica
    gives it once its market is open, HAEXEC_PAPER_PRICES=market), else at the signal's."""
    engine = settings.engine
    if engine.broker == "paper":
        return PaperBroker(
            pool,
            settings.election.cluster,
            settings.election.instance_id,
            engine.paper_balance,
            market=market,
            max_quote_age_ms=engine.market_max_age_ms,
            venue=engine.venue,
        )
    if engine.broker == "gateway":
        from engine.brokers.gateway import GatewayBroker

        assert engine.gateway_url and engine.gateway_token  # settings require both
        election = settings.election
        return GatewayBroker(
            engine.gateway_url,
            engine.gateway_token,
            election.cluster,
            election.instance_id,
            engine.broker_deadline_ms,
            ca_file=engine.gateway_ca,
        )
    from engine.brokers.mt5 import MT5Broker  # only when selected: it needs the Windows-only package

    return MT5Broker(
        login=engine.mt5_login,
        password=engine.mt5_password,
        server=engine.mt5_server,
        path=engine.mt5_path,
        magic=engine.mt5_magic,
        deadline_ms=engine.broker_deadline_ms,
    )


class Replica:
    def __init__(self, settings: Settings, redis_url: str, database_url: str, alerts: Alerts | None = None) -> None:
        self.settings = settings
        self.alerts: Alerts = alerts or NullSink()
        self.api_token = settings.api_token
        self._redis_url = redis_url
        self._database_url = database_url
        self._ready = False
        self._stopping = False
        election = settings.election
        self.coordinator = Coordinator(
            election,
            redis_url,
            database_url,
            describe=self._describe,
            on_started_leading=self._started_leading,
            on_stopped_leading=self._stopped_leading,
            may_lead=self._may_lead,
        )
        limits = SessionLimits(election.db_timeout_ms, application_name=f"haexec-engine-{election.instance_id}")
        self.engine_pool = make_pool(database_url, limits, name="haexec-engine", min_size=1, max_size=10)
        self.broker = build_broker(settings, self.engine_pool)
        engine = settings.engine
        self.breaker = CircuitBreaker(
            failure_threshold=3,
            slow_call_ms=engine.broker_deadline_ms,
            reset_timeout_ms=max(1000, election.lease_ms),
            broker=engine.broker,
            on_change=on_breaker_change(self.alerts, engine.broker),
        )
        self.executor = Executor(
            ExecutorConfig(
                cluster=election.cluster,
                instance_id=election.instance_id,
                broker_deadline_ms=engine.broker_deadline_ms,
                drift_margin_ms=election.drift_margin_ms,
                sweep_ms=engine.sweep_ms,
                in_doubt_policy=engine.in_doubt,
                in_doubt_grace_ms=engine.in_doubt_grace_ms,
            ),
            self.coordinator,
            self.engine_pool,
            database_url,
            self.broker,
            self.breaker,
            engine.risk,
            reconcile=self._reconcile,
            alert=self.alerts.emit,
        )
        self.supervisor = Supervisor(
            PgRestartLog(self.engine_pool, election.cluster, election.instance_id),
            on_restarted=self._loop_restarted,
            on_failed=self._loop_failed,
            fault=os.environ.get(TEST_LOOP_FAULT_ENV) or None,
        )
        executor = self.executor
        executor.beat = self.supervisor.register(
            "executor", executor_period_ms(settings), executor.restart, alive=lambda: executor.alive
        )
        # The position manager runs on the leader only (started and stopped with leadership);
        # it reads the market once start() has opened it. Any replica registers trades.
        self.positions = build_manager(
            settings, self.coordinator, self.engine_pool, self.broker, None, self.alerts.emit
        )
        manager = self.positions
        manager.beat = self.supervisor.register(
            "positions", max(1000, manager.cfg.period_ms), manager.start, alive=lambda: manager.alive, leader_only=True
        )
        self.executor.held_symbols = lambda: manager.held_symbols  # recovery's holds stop new trades
        self.registrar = build_registrar(settings, self.engine_pool, self.broker)
        # A paper booking wakes the manager, so a fill's stop is checked at once.
        self._book_listener = (
            BookListener(database_url, election.cluster, election.instance_id, self.positions.wake)
            if isinstance(self.broker, PaperBroker)
            else None
        )
        # Conditional trade plans: evaluated and executed by the leader only (engine/plans).
        self.plans = PlanRunner(
            RunnerConfig(election.cluster, election.instance_id), self.coordinator, self.engine_pool
        )
        plans = self.plans
        plans.beat = self.supervisor.register("plans", plans.period_ms, plans.restart, alive=lambda: plans.alive)
        self.http: HttpServer | None = None
        self.market: Market | None = None  # open from start() on
        self.market_max_age_ms = engine.market_max_age_ms
        self._watch: FeedWatch | None = None
        self._feed: FeedRunner | None = None
        # (epoch, monotonic time) of the latest leadership start, rebound whole by the leader
        # callback: a database error from an earlier term must not count against this one.
        self._leading: tuple[int | None, float] = (None, 0.0)
        # One failed sweep is a blip; no sweep through for as long as the coordinator itself
        # gives the database (and two sweeps at least) is an executor that cannot work.
        self._db_failing_limit_s = max(election.db_grace_ms, 2 * engine.sweep_ms) / 1000

    @property
    def ready(self) -> bool:
        return self._ready

    def kill_switch(self) -> dict[str, Any] | None:
        switch = self.executor.kill_switch
        return None if switch is None else {**switch.as_dict(), "state": switch.describe()}

    def health_extra(self) -> dict[str, str]:
        return {
            "executor": self._executor_health(),
            "broker": "circuit open" if self.breaker.state is BreakerState.OPEN else "ok",
            "loops": self.supervisor.health(),
        }

    def loops(self) -> dict[str, dict[str, object]]:
        return self.supervisor.states()

    def _may_lead(self) -> bool:
        """A replica with a failed loop does not lead (asked by the election thread). One that
        is stopping claims no leadership: between its executor's stop and its coordinator's, a
        peer's release could otherwise hand it one with nothing left to act on it. A stopping
        leader keeps its lease until stop() releases it, after the work in hand is recorded."""
        if self._stopping and not self.coordinator.is_leader():
            return False
        return not self.supervisor.failed()

    def _loop_restarted(self, loop: str, why: str) -> None:
        self.alerts.emit(LOOP_RESTARTED, WARNING, f"loop {loop} restarted: {why}", loop=loop)

    def _loop_failed(self, loop: str, why: str) -> None:
        self.alerts.emit(LOOP_FAILED, CRITICAL, f"loop {loop} failed: {why}", loop=loop)
        self.coordinator.reconsider()  # a leader releases now, so a healthy replica takes over
        self.coordinator.announce()  # and its registry entry says it is not healthy

    def positions_health(self) -> dict[str, Any]:
        """/health's `positions` detail, never a 503 by itself: a held symbol or a failing
        loop is alerted CRITICAL where it happens; the supervisor judges the loop."""
        manager = self.positions
        if not manager.alive:
            return {"state": "not leading"}
        report = manager.last_report
        return {
            "state": manager.health(),
            "managed": report.positions if report else None,
            "without_sl": report.naked if report else None,
            "held_symbols": dict(manager.held_symbols),
        }

    def market_health(self) -> str:
        """The feed as /health shows it: `ok`, `stale: EURUSD tick 12.3 s old`, `unavailable:
        ...`. Shown on every replica and never a 503 by itself: the feed is the same for all
        replicas (a stale one would take every replica out of a load balancer, and with it the
        intake, which needs no prices), and a quiet market (MT5 over a weekend, a replay at its
        end) is not a broken replica. What it costs is visible where it bites: the paper venue
        refuses a stale price (rule symbol_spec) and GET /market answers 503."""
        watch = self._watch
        return "starting" if watch is None else watch.state()

    def _open_market(self) -> Market:
        """The source HAEXEC_MARKET names; MT5 reads over the broker's terminal thread when the
        broker is MT5. ConfigError (exit 2) for an unusable replay file or symbol list."""
        from haexec.marketdata import open_market

        # MT5 market data over the MT5 broker's worker: one terminal connection per process.
        shared = self.settings.engine.market.source == "mt5"
        terminal = getattr(self.broker, "run_on_terminal", None) if shared else None
        try:
            return open_market(self.settings, self._database_url, terminal=terminal)
        except FeedUnavailable as e:
            raise StartupError(f"market data ({self.settings.engine.market.source}): {first_line(e)}") from None

    def _start_market(self, market: Market) -> None:
        chosen = self.settings.engine.market
        if chosen.symbols is not None:
            watched = list(chosen.symbols)
        elif chosen.source in ("mt5", "gateway"):
            watched = []  # the terminal's whole list (hundreds): only those named are watched
        else:
            watched = market.symbols()
        self._watch = FeedWatch(market, watched, self.market_max_age_ms)
        if watched:  # every tick wakes the position manager (it loops on the leader only)
            market.subscribe(watched, on_tick=lambda _tick: self.positions.wake())
        feed = self._feed = FeedRunner(market.feed, FEED_INTERVAL_S)
        period_ms = feed_period_ms(self.settings)
        feed.beat = self.supervisor.register("feed", period_ms, feed.restart, alive=lambda: feed.alive)
        feed.start()

    def _stop_market(self) -> None:
        if self._feed is not None:
            self._feed.stop()
        if self._watch is not None:
            self._watch.close()
        if self.market is not None:
            try:
                self.market.close()  # a replay saves its cursor
            except Exception as e:  # stopping goes on
                log.warning("market data close: %s", first_line(e))

    def _executor_health(self) -> str:
        if not self.executor.alive:
            return "stopped"
        coordinator = self.coordinator
        epoch = coordinator.epoch
        leading_epoch, leading_since = self._leading
        # Only a leader's executor works the database; a term whose callback has not run yet
        # has had no sweep to judge.
        if epoch is None or epoch != leading_epoch or not coordinator.is_leader():
            return "ok"
        db = self.executor.db_health
        if db.error is None:
            return "ok"
        failing_s = time.monotonic() - max(db.ok_at, leading_since)
        if failing_s < self._db_failing_limit_s:
            return "ok"
        return f"database failing for {failing_s:.1f}s: {db.error}"

    def switchover(self, target: str | None, actor: str, reason: str | None) -> tuple[bool, str]:
        """Hand leadership over: stop claiming, finish or hand back work in hand, then release
        (naming `target` when given). (False, why) when it cannot start. A switchover that
        starts is in the operator audit (the release itself is the elector's, in
        leadership_history)."""
        election = self.settings.election
        if not self.coordinator.is_leader():
            return False, f"{election.instance_id} is not the leader"
        if target is not None:
            if target == election.instance_id:
                return False, f"{target} is already the leader"
            known = {r.get("instance_id"): r for r in self.coordinator.replicas()}
            if target not in known:
                return False, f"unknown replica {target!r}"
            if not known[target].get("healthy"):
                return False, f"replica {target!r} is not healthy"
        if not self.executor.quiesce(timeout_s=self.settings.engine.broker_deadline_ms / 1000.0 + 1.0):
            self.executor.resume()
            return False, "work in hand did not finish within the broker deadline"
        if not self.coordinator.request_handover(target):
            self.executor.resume()
            return False, f"{election.instance_id} lost leadership meanwhile"
        self._audit("switchover", actor, reason, {"from": election.instance_id, "to": target})
        return True, "switching over"

    def _audit(self, action: str, actor: str, reason: str | None, detail: dict[str, Any]) -> None:
        """An operator action this process carried out, in the audit; the action went ahead
        either way, so a failed write is logged ERROR, never raised."""
        try:
            with self.engine_pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                audit.record(cur, self.settings.election.cluster, action, actor, reason, detail)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            log.error("operator audit: %s by %s not recorded: %s", action, actor, first_line(e))

    def _started_leading(self, epoch: int) -> None:
        self._leading = (epoch, time.monotonic())
        self.supervisor.set_leading(True)
        self.executor.on_started_leading(epoch)
        self.positions.on_started_leading(epoch)  # its first act: a stop audit of every position
        self.plans.on_started_leading(epoch)
        self.alerts.emit(LEADERSHIP_CHANGE, INFO, f"became leader at epoch {epoch}", epoch=epoch, event="acquired")

    def _stopped_leading(self, epoch: int, reason: str) -> None:
        self.supervisor.set_leading(False)
        self.executor.on_stopped_leading(epoch, reason)
        self.positions.on_stopped_leading(epoch, reason)
        self.plans.on_stopped_leading(epoch, reason)
        self.executor.resume()  # a switchover paused it; as a follower it claims nothing anyway
        kind = SPLIT_BRAIN if reason == "demoted:split_brain" else LEADERSHIP_CHANGE
        severity = WARNING if reason.startswith("released") else CRITICAL
        self.alerts.emit(kind, severity, f"stepped down: {reason}", epoch=epoch, event=reason)

    def _reconcile(self, epoch: int) -> None:
        reconcile(
            self.engine_pool,
            self.broker,
            self.settings.election.cluster,
            self.settings.election.instance_id,
            epoch,
            timeout_ms=RECONCILE_TIMEOUT_MS,
        )

    def _reconcile_at_start(self, timeout_s: float) -> None:
        """The venue against the database once before serving (as `haexec reconcile` does: facts
        recorded, no epoch). A mismatch is reported and left to the leader; a reconciliation
        that cannot run within the start-up timeout is exit 1."""
        cluster, instance = self.settings.election.cluster, self.settings.election.instance_id
        try:
            for attempt in _retrying(timeout_s, BrokerError, psycopg.OperationalError, psycopg_pool.PoolTimeout):
                with attempt:
                    reconcile(self.engine_pool, self.broker, cluster, instance, None, timeout_ms=RECONCILE_TIMEOUT_MS)
        except (BrokerError, psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise StartupError(f"reconciliation with broker {self.settings.engine.broker}: {first_line(e)}") from None

    def _describe(self) -> dict[str, Any]:
        http = f"{self.settings.http_host}:{self.http.port}" if self.http else None
        return {"http": http, "healthy": self._ready and self.coordinator.alive and not self.supervisor.failed()}

    def start(self) -> None:
        timeout = self.settings.startup_timeout_s
        probe = redis_client(self._redis_url, 2.0, f"haexec-probe-{self.settings.election.instance_id}")
        try:
            for attempt in _retrying(timeout, redis.RedisError):
                with attempt:
                    probe.ping()
        except redis.RedisError as e:
            raise StartupError(
                f"redis at {redact_redis_url(self._redis_url)} unreachable after {timeout:g}s: {e}"
            ) from None
        finally:
            probe.close()
        check_database(self._database_url, timeout)
        self.market = self._open_market()
        if isinstance(self.broker, PaperBroker) and self.settings.engine.paper_prices == "market":
            self.broker.market = self.market  # before the executor starts: every order is priced
        self.positions.market = self.market
        try:
            self.coordinator.open(timeout)
            self.engine_pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout as e:
            raise StartupError(f"database pool could not connect: {first_line(e)}") from None
        try:
            for attempt in _retrying(timeout, BrokerError):
                with attempt:
                    self.broker.connect()
        except BrokerUnavailable as e:
            raise StartupError(f"broker {self.settings.engine.broker}: {first_line(e)}") from None
        except BrokerError as e:
            raise StartupError(f"broker {self.settings.engine.broker} unavailable after {timeout:g}s: {e}") from None
        except psycopg.Error as e:  # the paper broker's tables
            why = migrate.schema_mismatch(e) or f"broker {self.settings.engine.broker}: {first_line(e)}"
            raise StartupError(why) from None
        try:
            limits = self.settings.http_limits
            self.http = HttpServer(build_app(self, limits), self.settings.http_host, self.settings.http_port, limits)
        except OSError as e:
            raise StartupError(str(e)) from None
        self._reconcile_at_start(timeout)  # after the port is ours: a taken port says so first
        self._start_market(self.market)  # after the broker: MT5 reads may need its terminal
        self.executor.start()  # before the election: a follower's executor only reads
        self.plans.start(self.market)  # it beats as a follower too (it only evaluates as leader)
        missing = self.supervisor.wait_first_beats(timeout)
        if missing:
            raise StartupError(f"loop {', '.join(missing)}: no first heartbeat within {timeout:g}s")
        self.coordinator.start()
        if self._book_listener is not None:
            self._book_listener.start()
        self.supervisor.start()
        self.http.start()
        self._ready = True
        self.coordinator.announce()
        log.info(
            "replica %s ready: cluster=%s http=%s:%d",
            self.settings.election.instance_id,
            self.settings.election.cluster,
            self.settings.http_host,
            self.http.port,
        )

    def stop(self, reason: str = "released:sigterm") -> None:
        """Stop claiming, let an in-flight broker call finish and be recorded, then release."""
        self._ready = False
        self._stopping = True  # from here on it claims no leadership (_may_lead)
        self.supervisor.stop()  # first: a loop being stopped is not a loop to restart
        self.executor.stop(timeout_s=self.settings.engine.broker_deadline_ms / 1000.0 + 1.0)
        self.positions.stop(timeout_s=self.settings.engine.broker_deadline_ms / 1000.0 + 1.0)
        if self._book_listener is not None:
            self._book_listener.stop()
        self.plans.stop()
        self.coordinator.stop(reason)
        self.alerts.stop(2.0)  # after the release, so its alert still goes out
        self._stop_market()  # before the broker: MT5 reads may run on its terminal thread
        self.broker.close()
        self.engine_pool.close(timeout=1.0)
        if self.http:
            self.http.stop()
