"""`haexec gateway` configuration: environment first, flags override. A broken rule is one line
naming the variable (exit 2 at the CLI); the token and the MT5 password are never shown."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from db.urls import is_postgres_url
from haexec.settings import HttpLimits, http_limits, is_loopback, parse_http

DEFAULT_HTTP = "127.0.0.1:8790"
YES = ("1", "yes", "true")
MAX_JOURNAL_DAYS = 36_500


@dataclass(frozen=True)
class GatewaySettings:
    cluster: str
    database_url: str
    host: str
    port: int
    token: str
    tls: tuple[str, str] | None  # (certificate chain, private key)
    plaintext_opt_out: bool  # a non-loopback bind without TLS, asked for explicitly
    state_dir: Path
    deadline_ms: int  # every terminal call's deadline (a send as a whole)
    db_timeout_ms: int  # the epoch confirmation's statement and connect timeout
    startup_timeout_s: float
    probe_ms: int  # how often the terminal's connection state is read
    journal_days: int  # settled journal rows are kept this long, then pruned
    http_limits: HttpLimits
    mt5_login: int | None
    mt5_password: str | None
    mt5_server: str | None
    mt5_path: str | None
    mt5_magic: int

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def exposed_in_plaintext(self) -> bool:
        return self.tls is None and not is_loopback(self.host)

    def __repr__(self) -> str:  # never the token or the password
        return f"GatewaySettings(cluster={self.cluster!r}, http={self.scheme}://{self.host}:{self.port})"

    __str__ = __repr__


def _int(env: Mapping[str, str], name: str, default: int | None, low: int = 1) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"must be an integer (got {raw!r})") from None
    if value < low:
        raise ConfigError(name, f"must be >= {low} (got {value})")
    return value


def _required_int(env: Mapping[str, str], name: str, default: int, low: int = 1) -> int:
    value = _int(env, name, default, low)
    assert value is not None
    return value


def _token(env: Mapping[str, str]) -> str:
    raw = env.get("HAEXEC_GATEWAY_TOKEN") or ""
    token = raw.strip()  # a newline from `$(cat token-file)` could never match a header
    if not token:
        raise ConfigError("HAEXEC_GATEWAY_TOKEN", "is required: every call to the gateway carries it")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError("HAEXEC_GATEWAY_TOKEN", "must be printable without spaces")
    return token


def _tls(env: Mapping[str, str]) -> tuple[str, str] | None:
    cert = (env.get("HAEXEC_GATEWAY_TLS_CERT") or "").strip()
    key = (env.get("HAEXEC_GATEWAY_TLS_KEY") or "").strip()
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "HAEXEC_GATEWAY_TLS_CERT" if not cert else "HAEXEC_GATEWAY_TLS_KEY"
        raise ConfigError(missing, "is required with the other TLS file (both or neither)")
    for name, path in (("HAEXEC_GATEWAY_TLS_CERT", cert), ("HAEXEC_GATEWAY_TLS_KEY", key)):
        if not os.path.isfile(path):
            raise ConfigError(name, f"no such file: {path}")
    try:
        # Loaded once here so a bad pair is exit 2 with its reason, not a dead server thread.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError("HAEXEC_GATEWAY_TLS_CERT", f"certificate and key do not load: {e}") from None
    return cert, key


def _cluster(env: Mapping[str, str]) -> str:
    cluster = env.get("HAEXEC_CLUSTER") or "default"
    if ":" in cluster or "{" in cluster or "}" in cluster or any(c.isspace() for c in cluster):
        raise ConfigError("HAEXEC_CLUSTER", f"must be a name without ':', '{{', '}}' or spaces (got {cluster!r})")
    return cluster


def _journal_days(env: Mapping[str, str]) -> int:
    days = _required_int(env, "HAEXEC_GATEWAY_JOURNAL_DAYS", 30)
    if days > MAX_JOURNAL_DAYS:
        raise ConfigError("HAEXEC_GATEWAY_JOURNAL_DAYS", f"must be 1..{MAX_JOURNAL_DAYS} (got {days})")
    return days


def load(env: Mapping[str, str] | None = None) -> GatewaySettings:
    env = os.environ if env is None else env
    database_url = env.get("HAEXEC_DATABASE_URL") or ""
    if not database_url:
        raise ConfigError("HAEXEC_DATABASE_URL", "is required: the gateway confirms every new epoch there")
    if not is_postgres_url(database_url):
        raise ConfigError("HAEXEC_DATABASE_URL", "must be a postgresql:// URL")
    host, port = parse_http(env.get("HAEXEC_GATEWAY_HTTP") or DEFAULT_HTTP, "HAEXEC_GATEWAY_HTTP")
    token = _token(env)
    tls = _tls(env)
    raw_opt_out = (env.get("HAEXEC_GATEWAY_ALLOW_PLAINTEXT") or "").strip().lower()
    if raw_opt_out and raw_opt_out not in (*YES, "0", "no", "false"):
        raise ConfigError("HAEXEC_GATEWAY_ALLOW_PLAINTEXT", f"must be yes or no (got {raw_opt_out!r})")
    opt_out = raw_opt_out in YES
    if tls is None and not is_loopback(host) and not opt_out:
        raise ConfigError(
            "HAEXEC_GATEWAY_HTTP",
            f"binding {host} (not loopback) requires HAEXEC_GATEWAY_TLS_CERT and HAEXEC_GATEWAY_TLS_KEY "
            "(or HAEXEC_GATEWAY_ALLOW_PLAINTEXT=yes to send the token and orders in clear)",
        )
    startup = _required_int(env, "HAEXEC_STARTUP_TIMEOUT_S", 30)
    return GatewaySettings(
        cluster=_cluster(env),
        database_url=database_url,
        host=host,
        port=port,
        token=token,
        tls=tls,
        plaintext_opt_out=opt_out,
        state_dir=Path(env.get("HAEXEC_GATEWAY_STATE_DIR") or ".haexec-gateway"),
        deadline_ms=_required_int(env, "HAEXEC_GATEWAY_DEADLINE_MS", 1000),
        db_timeout_ms=_required_int(env, "HAEXEC_GATEWAY_DB_TIMEOUT_MS", 1000),
        startup_timeout_s=float(startup),
        probe_ms=_required_int(env, "HAEXEC_GATEWAY_PROBE_MS", 2000, low=100),
        journal_days=_journal_days(env),
        http_limits=http_limits(env),
        mt5_login=_int(env, "HAEXEC_MT5_LOGIN", None, low=0),
        mt5_password=env.get("HAEXEC_MT5_PASSWORD") or None,
        mt5_server=env.get("HAEXEC_MT5_SERVER") or None,
        mt5_path=env.get("HAEXEC_MT5_PATH") or None,
        mt5_magic=_required_int(env, "HAEXEC_MT5_MAGIC", 770077, low=0),
    )
