"""One replica: the coordinator, the HTTP surface and (later) the engine, wired together.

Start-up is all or nothing: Redis reachable, database reachable and at schema head, HTTP
port bound, or the replica exits 1 with one line. It never serves half-started.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg_pool
import redis
from filelock import FileLock, Timeout
from psycopg_pool import ConnectionPool
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from coordinator.errors import first_line
from coordinator.lease import redis_client
from coordinator.redis_url import redact_redis_url
from coordinator.service import Coordinator
from db import migrate
from db.session import SessionLimits, make_pool
from db.urls import redact
from engine.breaker import BreakerState, CircuitBreaker
from engine.brokers.base import Broker, BrokerError, BrokerUnavailable
from engine.brokers.paper import PaperBroker
from engine.executor import Executor, ExecutorConfig
from engine.reconcile import RECONCILE_TIMEOUT_MS, reconcile
from haexec.alerts import CRITICAL, INFO, LEADERSHIP_CHANGE, SPLIT_BRAIN, WARNING, Alerts, NullSink, on_breaker_change
from haexec.http import HttpServer, build_app
from haexec.settings import Settings

log = logging.getLogger("haexec.replica")


class StartupError(Exception):
    """Start-up failed for an expected reason; the message is the one line to print."""


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """The configured URLs, or those of the embedded servers (started and migrated if needed)."""
    if not settings.embedded:
        assert settings.redis_url and settings.database_url
        return settings.redis_url, settings.database_url
    from haexec.embedded import EmbeddedError, ensure_servers

    try:
        servers = ensure_servers(settings.state_dir)
    except EmbeddedError as e:
        raise StartupError(f"embedded servers: {e}") from None
    ensure_schema_head(servers.database_url, settings)
    return settings.redis_url or servers.redis_url, settings.database_url or servers.database_url


def ensure_schema_head(database_url: str, settings: Settings) -> None:
    """Embedded default only: migrate to head, one process at a time."""
    try:
        with FileLock(str(settings.state_dir / "migrate.lock"), timeout=settings.startup_timeout_s):
            if not migrate.is_at_head(database_url):
                log.warning("migrating embedded database to %s", migrate.head_revision())
                migrate.upgrade(database_url)
    except Timeout:
        raise StartupError("embedded servers: timed out waiting for another process to migrate") from None


def _retrying(timeout_s: float, *errors: type[BaseException]) -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(errors),
        stop=stop_after_delay(timeout_s),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1),
        reraise=True,
    )


def build_broker(settings: Settings, pool: ConnectionPool) -> Broker:
    engine = settings.engine
    if engine.broker == "paper":
        return PaperBroker(pool, settings.election.cluster, settings.election.instance_id, engine.paper_balance)
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
        election = settings.election
        self.coordinator = Coordinator(
            election,
            redis_url,
            database_url,
            describe=self._describe,
            on_started_leading=self._started_leading,
            on_stopped_leading=self._stopped_leading,
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
        self.http: HttpServer | None = None
        # (epoch, monotonic time) of the latest leadership start, rebound whole by the leader
        # callback: a database error from an earlier term must not count against this one.
        self._leading: tuple[int | None, float] = (None, 0.0)
        # One failed sweep is a blip; no sweep through for as long as the coordinator itself
        # gives the database (and two sweeps at least) is an executor that cannot work.
        self._db_failing_limit_s = max(election.db_grace_ms, 2 * engine.sweep_ms) / 1000

    @property
    def ready(self) -> bool:
        return self._ready

    def health_extra(self) -> dict[str, str]:
        return {
            "executor": self._executor_health(),
            "broker": "circuit open" if self.breaker.state is BreakerState.OPEN else "ok",
        }

    def _executor_health(self) -> str:
        if not self.executor.alive:
            return "stopped"
        elector = self.coordinator.elector
        epoch = elector.epoch
        leading_epoch, leading_since = self._leading
        # Only a leader's executor works the database; a term whose callback has not run yet
        # has had no sweep to judge.
        if epoch is None or epoch != leading_epoch or not elector.is_leader():
            return "ok"
        db = self.executor.db_health
        if db.error is None:
            return "ok"
        failing_s = time.monotonic() - max(db.ok_at, leading_since)
        if failing_s < self._db_failing_limit_s:
            return "ok"
        return f"database failing for {failing_s:.1f}s: {db.error}"

    def switchover(self, target: str | None) -> tuple[bool, str]:
        """Hand leadership over: stop claiming, finish or hand back work in hand, then release
        (naming `target` when given). (False, why) when it cannot start."""
        election = self.settings.election
        if not self.coordinator.elector.is_leader():
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
        if not self.coordinator.elector.request_handover(target):
            self.executor.resume()
            return False, f"{election.instance_id} lost leadership meanwhile"
        return True, "switching over"

    def _started_leading(self, epoch: int) -> None:
        self._leading = (epoch, time.monotonic())
        self.executor.on_started_leading(epoch)
        self.alerts.emit(LEADERSHIP_CHANGE, INFO, f"became leader at epoch {epoch}", epoch=epoch, event="acquired")

    def _stopped_leading(self, epoch: int, reason: str) -> None:
        self.executor.on_stopped_leading(epoch, reason)
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

    def _describe(self) -> dict[str, Any]:
        http = f"{self.settings.http_host}:{self.http.port}" if self.http else None
        return {"http": http, "healthy": self._ready and self.coordinator.alive}

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
        try:
            for attempt in _retrying(timeout, Exception):
                with attempt:
                    current = migrate.current_revision(self._database_url)
        except Exception as e:  # SQLAlchemy wraps the driver's errors; any of them means "unreachable"
            raise StartupError(
                f"database at {redact(self._database_url)} unreachable after {timeout:g}s: {first_line(e)}"
            ) from None
        head = migrate.head_revision()
        if current != head:
            raise StartupError(
                f"database schema is at {current or 'base'}, this release needs {head}: run `haexec db upgrade`"
            )
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
            raise StartupError(f"broker {self.settings.engine.broker}: {e}") from None
        except BrokerError as e:
            raise StartupError(f"broker {self.settings.engine.broker} unavailable after {timeout:g}s: {e}") from None
        try:
            limits = self.settings.http_limits
            self.http = HttpServer(build_app(self, limits), self.settings.http_host, self.settings.http_port, limits)
        except OSError as e:
            raise StartupError(str(e)) from None
        self.coordinator.start()
        self.executor.start()
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
        self.executor.stop(timeout_s=self.settings.engine.broker_deadline_ms / 1000.0 + 1.0)
        self.coordinator.stop(reason)
        self.alerts.stop(2.0)  # after the release, so its alert still goes out
        self.broker.close()
        self.engine_pool.close(timeout=1.0)
        if self.http:
            self.http.stop()
