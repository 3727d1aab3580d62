"""Replica configuration: environment first, command-line flags override. Every rule broken
is reported as one line naming the setting (exit status 2 at the CLI)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator.config import ConfigError, ElectionConfig
from db.urls import is_postgres_url

# Election field -> the environment variable that sets it.
TIMER_ENV = {
    "lease_ms": "HAEXEC_LEASE_MS",
    "renew_ms": "HAEXEC_RENEW_MS",
    "renew_deadline_ms": "HAEXEC_RENEW_DEADLINE_MS",
    "drift_margin_ms": "HAEXEC_DRIFT_MARGIN_MS",
    "stale_after_ms": "HAEXEC_STALE_AFTER_MS",
    "db_grace_ms": "HAEXEC_DB_GRACE_MS",
    "db_timeout_ms": "HAEXEC_DB_TIMEOUT_MS",
}
FIELD_ENV = {"cluster": "HAEXEC_CLUSTER", "instance_id": "HAEXEC_INSTANCE_ID", **TIMER_ENV}
BROKERS = ("paper", "mt5")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class Settings:
    election: ElectionConfig
    redis_url: str | None
    database_url: str | None
    http_host: str
    http_port: int
    api_token: str | None
    broker: str
    state_dir: Path
    startup_timeout_s: float

    @property
    def embedded(self) -> bool:
        return self.redis_url is None or self.database_url is None

    def __repr__(self) -> str:  # never print the token
        return f"Settings(cluster={self.election.cluster!r}, instance={self.election.instance_id!r})"


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer (got {raw!r})") from None


def parse_http(value: str, setting: str = "HAEXEC_HTTP") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(setting, f"must be host:port (got {value!r})")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(setting, f"port must be an integer (got {port!r})") from None
    if not 0 <= number <= 65535:
        raise ConfigError(setting, f"port must be 0..65535 (got {number})")
    return host.strip("[]"), number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def election_config(env: Mapping[str, str]) -> ElectionConfig:
    cluster = env.get("HAEXEC_CLUSTER") or "default"
    instance = env.get("HAEXEC_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"
    timers = {field: _int(env, name) for field, name in TIMER_ENV.items()}
    lease = timers.pop("lease_ms")
    lease = 3000 if lease is None else lease
    overrides = {k: v for k, v in timers.items() if v is not None}
    try:
        return ElectionConfig.for_lease(cluster, instance, lease, **overrides)
    except ConfigError as e:
        name = FIELD_ENV.get(e.setting)
        raise ConfigError(f"{name} ({e.setting})" if name else e.setting, e.rule) from None


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    election = election_config(env)
    redis_url = env.get("HAEXEC_REDIS_URL") or None
    if redis_url and not redis_url.startswith(REDIS_SCHEMES):
        raise ConfigError("HAEXEC_REDIS_URL", "must start with redis://, rediss:// or unix://")
    database_url = env.get("HAEXEC_DATABASE_URL") or None
    if database_url and not is_postgres_url(database_url):
        raise ConfigError("HAEXEC_DATABASE_URL", "must be a postgresql:// URL")
    host, port = parse_http(env.get("HAEXEC_HTTP") or "127.0.0.1:8701")
    token = env.get("HAEXEC_API_TOKEN") or None
    if not is_loopback(host) and not token:
        raise ConfigError("HAEXEC_HTTP", f"binding {host} (not loopback) requires HAEXEC_API_TOKEN")
    broker = env.get("HAEXEC_BROKER") or "paper"
    if broker not in BROKERS:
        raise ConfigError("HAEXEC_BROKER", f"must be one of {', '.join(BROKERS)} (got {broker!r})")
    startup = _int(env, "HAEXEC_STARTUP_TIMEOUT_S")
    if startup is not None and startup <= 0:
        raise ConfigError("HAEXEC_STARTUP_TIMEOUT_S", f"must be positive (got {startup})")
    return Settings(
        election=election,
        redis_url=redis_url,
        database_url=database_url,
        http_host=host,
        http_port=port,
        api_token=token,
        broker=broker,
        state_dir=Path(env.get("HAEXEC_STATE_DIR") or ".haexec"),
        startup_timeout_s=float(startup or 30),
    )
