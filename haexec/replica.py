"""One replica: the coordinator, the HTTP surface and (later) the engine, wired together.

Start-up is all or nothing: Redis reachable, database reachable and at schema head, HTTP
port bound, or the replica exits 1 with one line. It never serves half-started.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg_pool
import redis
from filelock import FileLock, Timeout
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from coordinator.elector import first_line
from coordinator.lease import redis_client
from coordinator.service import Coordinator
from db import migrate
from db.urls import redact
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


class Replica:
    def __init__(self, settings: Settings, redis_url: str, database_url: str) -> None:
        self.settings = settings
        self._redis_url = redis_url
        self._database_url = database_url
        self._ready = False
        self.coordinator = Coordinator(settings.election, redis_url, database_url, describe=self._describe)
        self.http: HttpServer | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    def _describe(self) -> dict[str, Any]:
        http = f"{self.settings.http_host}:{self.http.port}" if self.http else None
        return {"http": http, "healthy": self._ready and self.coordinator.alive}

    def start(self) -> None:
        timeout = self.settings.startup_timeout_s
        probe = redis_client(self._redis_url, 2.0)
        try:
            for attempt in _retrying(timeout, redis.RedisError):
                with attempt:
                    probe.ping()
        except redis.RedisError as e:
            raise StartupError(
                f"redis at {redact(self._redis_url)} unreachable after {timeout:g}s: {e}"
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
                f"database schema is at {current or 'base'}, this release needs {head}: "
                "run `haexec db upgrade`"
            )
        try:
            self.coordinator.open(timeout)
        except psycopg_pool.PoolTimeout as e:
            raise StartupError(f"database pool could not connect: {first_line(e)}") from None
        try:
            self.http = HttpServer(build_app(self), self.settings.http_host, self.settings.http_port)
        except OSError as e:
            raise StartupError(str(e)) from None
        self.coordinator.start()
        self.http.start()
        self._ready = True
        log.info(
            "replica %s ready: cluster=%s http=%s:%d",
            self.settings.election.instance_id,
            self.settings.election.cluster,
            self.settings.http_host,
            self.http.port,
        )

    def stop(self, reason: str = "released:sigterm") -> None:
        self._ready = False
        self.coordinator.stop(reason)
        if self.http:
            self.http.stop()
