"""Replica configuration: environment first, command-line flags override. Every rule broken
is reported as one line naming the setting (exit status 2 at the CLI)."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from common.errors import ConfigError
from common.numbers import ascii_decimal, ascii_int
from coordinator.config import MAX_TIMER_MS, ElectionConfig
from coordinator.redis_url import parse_redis_url
from db.urls import is_postgres_url
from engine.market.settings import MarketSettings, market_settings
from engine.positions.rules import ManageRules, RulesError, parse_manage
from engine.positions.settings import PositionSettings, position_settings
from engine.risk import RiskLimits
from engine.signal import BodyTooLarge, DuplicateKey, loads
from engine.venue.settings import VenueSettings, venue_settings

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
BROKERS = ("paper", "mt5", "gateway")


@dataclass(frozen=True)
class HttpLimits:
    """How much of the HTTP server one client may hold, and for how long."""

    max_connections: int = 256  # served at once; a request beyond them is answered 503
    header_timeout_ms: int = 5000  # from a request head's first byte (or a new connection) to its end
    body_timeout_ms: int = 10000  # from the head to the body's last byte; then 408 and the connection closed
    keepalive_ms: int = 5000  # an idle connection between requests is closed after this


HTTP_LIMIT_ENV = {
    "max_connections": "HAEXEC_HTTP_MAX_CONNECTIONS",
    "header_timeout_ms": "HAEXEC_HTTP_HEADER_TIMEOUT_MS",
    "body_timeout_ms": "HAEXEC_HTTP_BODY_TIMEOUT_MS",
    "keepalive_ms": "HAEXEC_HTTP_KEEPALIVE_MS",
}


def http_limits(env: Mapping[str, str]) -> HttpLimits:
    given: dict[str, int] = {}
    for limit, name in HTTP_LIMIT_ENV.items():
        value = _int(env, name)
        if value is None:
            continue
        if value <= 0:
            raise ConfigError(name, f"must be a positive integer (got {value})")
        given[limit] = value
    return HttpLimits(**given)


@dataclass(frozen=True)
class Settings:
    election: ElectionConfig
    redis_url: str | None
    database_url: str | None
    http_host: str
    http_port: int
    http_limits: HttpLimits
    api_token: str | None
    broker: str
    state_dir: Path
    startup_timeout_s: float
    engine: EngineSettings
    log_level: str = "INFO"

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
        return ascii_int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer in ASCII digits (got {raw!r})") from None


def _int_or(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name)
    return default if value is None else value


def _int_in(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    """The variable within [low, high] (None when unset), else a ConfigError naming it."""
    value = _int(env, name)
    if value is not None and not low <= value <= high:
        raise ConfigError(name, f"must be {low}..{high} (got {value})")
    return value


MAX_STARTUP_TIMEOUT_S = 86_400
MAX_MT5_ID = 2**63 - 1  # MT5 logins and magic numbers are 64-bit integers


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


def _api_token(env: Mapping[str, str]) -> str | None:
    """HAEXEC_API_TOKEN without surrounding whitespace: a newline from `$(cat token-file)` or a
    stray blank could never match what a client sends after "Bearer " (HTTP strips it there)."""
    raw = env.get("HAEXEC_API_TOKEN") or None
    if raw is None:
        return None
    token = raw.strip()
    if not token:
        raise ConfigError("HAEXEC_API_TOKEN", "is only whitespace; unset it or give a token")
    return token


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
    if redis_url:
        try:
            parse_redis_url(redis_url)
        except ValueError as e:
            raise ConfigError("HAEXEC_REDIS_URL", str(e)) from None
    database_url = env.get("HAEXEC_DATABASE_URL") or None
    if database_url and not is_postgres_url(database_url):
        raise ConfigError("HAEXEC_DATABASE_URL", "must be a postgresql:// URL")
    host, port = parse_http(env.get("HAEXEC_HTTP") or "127.0.0.1:8701")
    token = _api_token(env)
    if not is_loopback(host) and not token:
        raise ConfigError("HAEXEC_HTTP", f"binding {host} (not loopback) requires HAEXEC_API_TOKEN")
    broker = env.get("HAEXEC_BROKER") or "paper"
    if broker not in BROKERS:
        raise ConfigError("HAEXEC_BROKER", f"must be one of {', '.join(BROKERS)} (got {broker!r})")
    startup = _int_or(env, "HAEXEC_STARTUP_TIMEOUT_S", 30)
    if not 0 < startup <= MAX_STARTUP_TIMEOUT_S:
        raise ConfigError(
            "HAEXEC_STARTUP_TIMEOUT_S", f"must be positive and at most {MAX_STARTUP_TIMEOUT_S} s (got {startup})"
        )
    return Settings(
        log_level=log_level(env),
        election=election,
        redis_url=redis_url,
        database_url=database_url,
        http_host=host,
        http_port=port,
        http_limits=http_limits(env),
        api_token=token,
        broker=broker,
        state_dir=Path(env.get("HAEXEC_STATE_DIR") or ".haexec"),
        startup_timeout_s=float(startup),
        engine=engine_settings(env, election, broker),
    )


def log_level(env: Mapping[str, str]) -> str:
    """HAEXEC_LOG_LEVEL as a logging level name (any case); a name logging does not know is refused,
    not quietly read as INFO."""
    raw = env.get("HAEXEC_LOG_LEVEL") or "INFO"
    known = set(logging.getLevelNamesMapping()) - {"NOTSET"}  # WARN and FATAL are logging's aliases
    if raw.upper() not in known:
        names = "CRITICAL, ERROR, WARNING, INFO, DEBUG"
        raise ConfigError("HAEXEC_LOG_LEVEL", f"must be one of {names} (got {raw!r})")
    return raw.upper()


IN_DOUBT_POLICIES = ("hold", "reexecute")
# What the paper venue fills market orders at: the market's ask or bid, or the signal's price.
PAPER_PRICES = ("market", "signal")
DEFAULT_MARKET_MAX_AGE_MS = 5000


@dataclass(frozen=True)
class EngineSettings:
    broker: str
    broker_deadline_ms: int
    in_doubt: str
    in_doubt_grace_ms: int
    sweep_ms: int
    paper_balance: Decimal
    risk: RiskLimits
    mt5_login: int | None
    mt5_password: str | None
    mt5_server: str | None
    mt5_path: str | None
    mt5_magic: int
    market: MarketSettings
    # The oldest tick the paper venue prices an order from, GET /market serves and /health
    # calls fresh.
    market_max_age_ms: int
    paper_prices: str  # PAPER_PRICES
    # The paper venue's rules (hours, trade modes, leverage): the paper broker refuses at
    # booking what the venue would, and prices margin with the venue's leverage.
    venue: VenueSettings = field(default_factory=VenueSettings)
    # HAEXEC_MANAGE_DEFAULT: the rules of a position whose signal has no `manage` block.
    manage_default: ManageRules = ManageRules()
    gateway_url: str | None = None  # HAEXEC_BROKER=gateway: the fenced MT5 gateway
    gateway_token: str | None = None
    gateway_ca: str | None = None  # a CA bundle for an https gateway (default: the system's)
    positions: PositionSettings = field(default_factory=PositionSettings)  # HAEXEC_SL_DEADLINE_MS, ...

    def __repr__(self) -> str:  # never print the MT5 password or the gateway token
        return f"EngineSettings(broker={self.broker!r}, deadline={self.broker_deadline_ms})"


def engine_settings(env: Mapping[str, str], election: ElectionConfig, broker: str) -> EngineSettings:
    default_deadline = election.db_timeout_ms if broker == "paper" else election.lease_ms // 2
    deadline = _int_or(env, "HAEXEC_BROKER_DEADLINE_MS", default_deadline)
    if deadline <= 0 or deadline + election.drift_margin_ms >= election.trusted_ms:
        raise ConfigError(
            "HAEXEC_BROKER_DEADLINE_MS",
            f"must be positive and leave a lease to send under: deadline + drift_margin < lease - drift_margin "
            f"({deadline} + {election.drift_margin_ms} >= {election.trusted_ms})",
        )
    policy = env.get("HAEXEC_IN_DOUBT") or "hold"
    if policy not in IN_DOUBT_POLICIES:
        raise ConfigError("HAEXEC_IN_DOUBT", f"must be one of {', '.join(IN_DOUBT_POLICIES)} (got {policy!r})")
    grace = _int_or(env, "HAEXEC_IN_DOUBT_GRACE_MS", 2 * deadline)
    if not deadline < grace <= MAX_TIMER_MS:
        raise ConfigError(
            "HAEXEC_IN_DOUBT_GRACE_MS",
            f"must be longer than the broker deadline and at most {MAX_TIMER_MS} ms (got {grace}, deadline {deadline})",
        )
    sweep = _int_or(env, "HAEXEC_SWEEP_MS", 1000)
    if not 0 < sweep <= MAX_TIMER_MS:
        raise ConfigError("HAEXEC_SWEEP_MS", f"must be positive and at most {MAX_TIMER_MS} ms (got {sweep})")
    magic = _int_in(env, "HAEXEC_MT5_MAGIC", 0, MAX_MT5_ID)
    raw_balance = env.get("HAEXEC_PAPER_BALANCE") or "100000"
    try:
        balance = ascii_decimal(raw_balance)
    except ValueError:
        raise ConfigError("HAEXEC_PAPER_BALANCE", f"must be a decimal number (got {raw_balance!r})") from None
    if not balance.is_finite() or balance <= 0:
        raise ConfigError("HAEXEC_PAPER_BALANCE", f"must be positive (got {raw_balance!r})")
    prices = (env.get("HAEXEC_PAPER_PRICES") or "market").strip()
    if prices not in PAPER_PRICES:
        raise ConfigError("HAEXEC_PAPER_PRICES", f"must be one of {', '.join(PAPER_PRICES)} (got {prices!r})")
    max_age = _int_in(env, "HAEXEC_MARKET_MAX_AGE_MS", 1, MAX_TIMER_MS)
    market = market_settings(env)
    return EngineSettings(
        broker=broker,
        broker_deadline_ms=deadline,
        in_doubt=policy,
        in_doubt_grace_ms=grace,
        sweep_ms=sweep,
        paper_balance=balance,
        risk=RiskLimits.from_env(env),
        manage_default=manage_default(env),
        mt5_login=_int_in(env, "HAEXEC_MT5_LOGIN", 1, MAX_MT5_ID),
        mt5_password=env.get("HAEXEC_MT5_PASSWORD") or None,
        mt5_server=env.get("HAEXEC_MT5_SERVER") or None,
        mt5_path=env.get("HAEXEC_MT5_PATH") or None,
        mt5_magic=770077 if magic is None else magic,
        market=market,
        market_max_age_ms=DEFAULT_MARKET_MAX_AGE_MS if max_age is None else max_age,
        paper_prices=prices,
        venue=venue_settings(env) if broker == "paper" else VenueSettings(),
        positions=position_settings(env),
        **(_gateway(env) if "gateway" in (broker, market.source) else {}),
    )


def manage_default(env: Mapping[str, str]) -> ManageRules:
    """HAEXEC_MANAGE_DEFAULT: a `manage` block as JSON, decoded and validated as a signal's
    is (unset or blank: no rules). Every bad field is named on the one line."""
    raw = (env.get("HAEXEC_MANAGE_DEFAULT") or "").strip()
    if not raw:
        return ManageRules()
    try:
        block = loads(raw)
    except (BodyTooLarge, DuplicateKey) as e:
        raise ConfigError("HAEXEC_MANAGE_DEFAULT", str(e)) from None
    except (ValueError, RecursionError):
        raise ConfigError("HAEXEC_MANAGE_DEFAULT", 'is not JSON (e.g. {"breakeven": {"at_rr": 1}})') from None
    try:
        return parse_manage(block, "manage")
    except RulesError as e:
        problems = []
        for where, problem in e.fields:
            field = where.removeprefix("manage").lstrip(".")
            problems.append(f"{field}: {problem}" if field else problem)
        raise ConfigError("HAEXEC_MANAGE_DEFAULT", "; ".join(problems)) from None


def _gateway(env: Mapping[str, str]) -> dict[str, str | None]:
    """HAEXEC_GATEWAY_URL (http(s)://host:port), HAEXEC_GATEWAY_TOKEN, HAEXEC_GATEWAY_CA."""
    url = (env.get("HAEXEC_GATEWAY_URL") or "").strip()
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError("HAEXEC_GATEWAY_URL", f"has a bad port (got {url!r})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError("HAEXEC_GATEWAY_URL", f"must be http(s)://host:port of the gateway (got {url!r})")
    token = (env.get("HAEXEC_GATEWAY_TOKEN") or "").strip()
    if not token:
        raise ConfigError("HAEXEC_GATEWAY_TOKEN", "is required with HAEXEC_BROKER=gateway or HAEXEC_MARKET=gateway")
    ca = (env.get("HAEXEC_GATEWAY_CA") or "").strip() or None
    if ca is not None and not os.path.isfile(ca):
        raise ConfigError("HAEXEC_GATEWAY_CA", f"no such file: {ca}")
    return {"gateway_url": url, "gateway_token": token, "gateway_ca": ca}
