"""Redis URLs and the clients made from them: one Redis, or a master found through Sentinel.

Direct: ``redis://``, ``rediss://`` (TLS), ``unix://`` -- exactly what ``redis.Redis.from_url``
takes. Sentinel::

    redis+sentinel://[user:pass@]h1:p1,h2:p2/<master-name>[/<db>][?option=value&...]
    rediss+sentinel://...          (TLS to the data nodes, same as ?ssl=1)

The userinfo is the data nodes' (master's) credentials. Options: ``sentinel_username``,
``sentinel_password`` (the sentinels' own credentials), ``sentinel_ssl`` (TLS to the sentinels;
defaults to the data nodes' setting), ``sentinel_timeout`` (seconds; the sentinels' connect and
read timeout), ``ssl``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
``ssl_check_hostname`` (TLS, for both), ``socket_timeout``, ``socket_connect_timeout`` (the data
nodes', overriding the caller's, as a query option does for ``redis://``). A sentinel without a
port is on 26379.

Every client made here keeps the properties the lease depends on: no automatic retries (a
retried ``SET NX`` whose first reply was lost is exactly the hazard the lease settles by reading
the key back), socket timeouts, keepalive, a client name for ``CLIENT LIST``, str replies.

A Sentinel client looks the master up on every (re)connection. A connection still open to a
master that Sentinel has demoted is dropped as soon as that node refuses a write -- ``READONLY``
(also when Redis < 7 wraps it in a script error) or ``NOREPLICAS`` (``min-replicas-to-write``
on a master that lost its replica, which is what an old master says between the promotion of
its replica and its own reconfiguration, seconds later) -- and the command fails with a
``ConnectionError``, so the caller's next command goes to the new master.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.connection import parse_url as _redis_parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from db.urls import redact

DIRECT_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = DIRECT_SCHEMES + SENTINEL_SCHEMES
DEFAULT_SENTINEL_PORT = 26379
# A sentinel lookup happens on every (re)connection, one sentinel after another until one
# answers: each gets this long at most (or the client's own timeout, when shorter).
DEFAULT_SENTINEL_TIMEOUT_S = 0.5

_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_FLOAT_OPTIONS = ("sentinel_timeout", "socket_timeout", "socket_connect_timeout")
_BOOL_OPTIONS = ("ssl", "sentinel_ssl", "ssl_check_hostname")
_STR_OPTIONS = ("sentinel_username", "sentinel_password", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = ("none", "optional", "required")
SENTINEL_OPTIONS = _FLOAT_OPTIONS + _BOOL_OPTIONS + _STR_OPTIONS + ("ssl_cert_reqs",)
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. ``str()`` and ``repr()`` never show a secret."""

    scheme: str
    url: str = field(repr=False)
    # direct
    host: str | None = None
    port: int | None = None
    path: str | None = None  # unix://
    # sentinel
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_ssl: bool = False
    sentinel_timeout_s: float | None = None
    # the data nodes' extra connection options (socket_*, ssl_*), already typed
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def is_sentinel(self) -> bool:
        return self.scheme in SENTINEL_SCHEMES

    def redacted(self) -> str:
        return redact_redis_url(self.url)

    def __str__(self) -> str:
        return self.redacted()


def redact_redis_url(url: str) -> str:
    """The URL with every password replaced by ``***``: the userinfo's and any query option
    whose name says password. Works on malformed URLs too (it never parses them)."""
    return redact(url)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse and check a Redis URL; ``ValueError`` with a one-line message (never a secret)
    when it is malformed: unknown scheme, no host, bad port, no master name, bad option."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("is empty")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    allowed = ", ".join(s + "://" for s in SCHEMES)
    if not sep or not re.fullmatch(r"[a-z][a-z0-9+.-]{0,19}", scheme):
        raise ValueError(f"has no scheme: must start with one of {allowed}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme}://: must be one of {allowed}")
    if any(c.isspace() for c in url):
        raise ValueError("must not contain whitespace")
    if scheme in SENTINEL_SCHEMES:
        return _parse_sentinel(url, scheme)
    return _parse_direct(url, scheme)


def _userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    at = netloc.rfind("@")
    if at < 0:
        return None, None, netloc
    user, has_pw, password = netloc[:at].partition(":")
    return (unquote(user) or None), (unquote(password) if has_pw else None), netloc[at + 1 :]


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        # The text itself is not shown: a mistyped URL can put part of a password here.
        raise ValueError(f"{where}: port must be a number 1..65535")
    return int(text)


def _host_port(item: str, where: str, default_port: int | None) -> tuple[str, int | None]:
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise ValueError(f"{where}: unclosed '[' in an IPv6 address")
        host, rest = item[1:end], item[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{where}: expected ':port' after the IPv6 address")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = item.partition(":")
        port_text = port_text_ if colon else None
    if not host:
        raise ValueError(f"{where}: no host")
    if port_text is None:
        return unquote(host), default_port
    return unquote(host), _port(port_text, where)


def _parse_direct(url: str, scheme: str) -> RedisTarget:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"is not a valid {scheme}:// URL") from None
    username, password, hostport = _userinfo(parts.netloc)
    if scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise ValueError("unix:// needs a socket path (unix:///path/to/redis.sock)")
        host, port, db = None, None, 0
    else:
        path = None
        host, port = _host_port(hostport, f"{scheme}:// URL", 6379)
        db_text = unquote(parts.path).strip("/")
        if db_text and not db_text.isdigit():
            raise ValueError(f"{scheme}:// URL: the path must be a database number (/0, /1, ...)")
        db = int(db_text) if db_text else 0
    try:
        kwargs = _redis_parse_url(url)  # the query options, as from_url will read them
    except ValueError as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else f"is not a valid {scheme}:// URL") from None
    if "db" in kwargs:
        db = int(kwargs["db"])
    options = tuple(
        (k, v) for k, v in kwargs.items() if k not in ("host", "port", "path", "db", "username", "password")
    )
    options = tuple((k, v) for k, v in options if k != "connection_class")
    return RedisTarget(
        scheme=scheme,
        url=url,
        host=host,
        port=port,
        path=path,
        db=db,
        username=username,
        password=password,
        ssl=scheme == "rediss",
        options=options,
    )


def _query(query: str) -> dict[str, str]:
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("malformed query string (expected name=value&...)") from None
    out: dict[str, str] = {}
    for position, (name, values) in enumerate(raw.items(), start=1):
        if name not in SENTINEL_OPTIONS:
            # The name is not shown: an unencoded '&' in a password makes part of it a "name".
            close = difflib.get_close_matches(name, SENTINEL_OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(SENTINEL_OPTIONS)}"
            raise ValueError(f"unknown option (the {_ordinal(position)} in the query; {hint})")
        if len(values) > 1:
            raise ValueError(f"option {name!r} given more than once")
        out[name] = values[0]
    return out


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _typed(name: str, value: str) -> Any:
    secret = "password" in name
    if name in _FLOAT_OPTIONS:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number > 0 or number == float("inf"):
            raise ValueError(f"option {name!r} must be a positive number of seconds")
        return number
    if name in _BOOL_OPTIONS:
        flag = _BOOL.get(value.lower())
        if flag is None:
            raise ValueError(f"option {name!r} must be 1/0, true/false, yes/no or on/off")
        return flag
    if name == "ssl_cert_reqs":
        if value.lower() not in _CERT_REQS:
            raise ValueError(f"option 'ssl_cert_reqs' must be one of {', '.join(_CERT_REQS)}")
        return value.lower()
    if not value and not secret:
        raise ValueError(f"option {name!r} is empty")
    return value


def _parse_sentinel(url: str, scheme: str) -> RedisTarget:
    rest = url.split("://", 1)[1]
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError(f"{scheme}:// URL must not have a #fragment")
    rest, _, query = rest.partition("?")
    # The userinfo may contain '/' (percent-encoding is optional in practice): it ends at the
    # last '@' of the whole authority-and-path.
    at = rest.rfind("@")
    userinfo, rest = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    netloc, slash, path = rest.partition("/")
    user, has_pw, secret = userinfo.partition(":")
    username, password = (unquote(user) or None), (unquote(secret) if has_pw else None)
    if not netloc:
        raise ValueError(f"{scheme}:// URL names no sentinel (expected host:port[,host:port...])")
    sentinels: list[tuple[str, int]] = []
    for i, item in enumerate(netloc.split(","), start=1):
        host, port = _host_port(item, f"sentinel {i}", DEFAULT_SENTINEL_PORT)
        assert port is not None
        sentinels.append((host, port))
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError(f"{scheme}:// URL names no master (expected .../<master-name>[/<db>])")
    if len(segments) > 2:
        raise ValueError(f"{scheme}:// URL: the path must be /<master-name>[/<db>]")
    master = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"{scheme}:// URL: the database after the master name must be a number")
        db = int(segments[1])
    opts = {name: _typed(name, value) for name, value in _query(query).items()}
    ssl = bool(opts.pop("ssl", scheme == "rediss+sentinel"))
    if scheme == "rediss+sentinel" and not ssl:
        raise ValueError("rediss+sentinel:// with ssl=0 contradicts itself")
    sentinel_ssl = bool(opts.pop("sentinel_ssl", ssl))
    if not (ssl or sentinel_ssl) and any(k in opts for k in _TLS_OPTIONS):
        raise ValueError("ssl_* options need TLS: use rediss+sentinel://, ssl=1 or sentinel_ssl=1")
    return RedisTarget(
        scheme=scheme,
        url=url,
        sentinels=tuple(sentinels),
        master=master,
        db=db,
        username=username,
        password=password,
        ssl=ssl,
        sentinel_username=opts.pop("sentinel_username", None) or None,
        sentinel_password=opts.pop("sentinel_password", None) or None,
        sentinel_ssl=sentinel_ssl,
        sentinel_timeout_s=opts.pop("sentinel_timeout", None),
        options=tuple(sorted(opts.items())),
    )


# --------------------------------------------------------------------------- clients


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


_NOT_A_WRITABLE_MASTER = ("READONLY", "NOREPLICAS", "MASTERDOWN")


def _not_a_writable_master(error: redis.ResponseError) -> bool:
    text = str(error)
    # Redis >= 7 keeps the code at the start, also for errors raised inside a script; Redis 6
    # wraps them: "Error running script (...): @user_script:4: ... -READONLY You can't write...".
    return any(text.startswith(code + " ") or f"-{code} " in text for code in _NOT_A_WRITABLE_MASTER)


class MasterConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection drops itself on a bare ``READONLY`` reply. This one also
    does on a script-wrapped ``READONLY`` (Redis < 7) and on ``NOREPLICAS``/``MASTERDOWN``: the
    node it reached is not a master that may take writes, so the next command looks up the
    master again instead of staying on the demoted one until it is reconfigured."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as e:
            if not (self.connection_pool.is_master and _not_a_writable_master(e)):
                raise
            where = f"{self.host}:{self.port}"
            self.disconnect()
            raise redis.ConnectionError(f"{where} no longer takes writes as master: {_first_line(e)}") from e


class MasterSSLConnection(MasterConnection, SSLConnection):
    pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ConciseSentinel(Sentinel):
    """redis-py's Sentinel, whose "no master" error is one short line: each sentinel's
    address and why it did not answer (redis-py's own message holds every client's repr)."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        why: list[str] = []
        for i, sentinel in enumerate(self.sentinels):
            kwargs = sentinel.connection_pool.connection_kwargs
            where = f"{kwargs.get('host')}:{kwargs.get('port')}"
            try:
                masters = sentinel.sentinel_masters()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
                why.append(f"{where}: {_first_line(e)}")
                continue
            state = masters.get(service_name)
            if state is None:
                why.append(f"{where}: monitors no master {service_name!r}")
                continue
            if not self.check_master_state(state, service_name):
                why.append(f"{where}: reports it down")
                continue
            # The sentinel that answered goes first next time (as redis-py does).
            self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]
            forced = getattr(self, "_force_master_ip", None)
            ip = forced if forced is not None else state["ip"]
            return ip, int(state["port"])
        raise MasterNotFoundError(f"no master {service_name!r} found through Sentinel: {'; '.join(why)}")


class SentinelRedis(redis.Redis):
    """A master client found through Sentinel; ``close()`` also closes its sentinel connections."""

    sentinel_client: Sentinel | None = None  # set by make_client (not `sentinel`: that is a Redis command)

    def close(self) -> None:
        try:
            super().close()
        finally:
            sentinel, self.sentinel_client = self.sentinel_client, None
            if sentinel is not None:
                for client in sentinel.sentinels:
                    client.close()


def _tls_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in _TLS_OPTIONS}


def make_client(url: str, timeout_s: float | None, name: str | None = None) -> redis.Redis:
    """A client for ``url`` that never retries on its own (see the module docstring).

    ``timeout_s`` is the connect and read timeout (None: block, for a pub/sub listener);
    ``name`` shows in ``CLIENT LIST``. Raises ``ValueError`` for a malformed URL. Connects
    lazily: an unreachable server (or no sentinel answering) surfaces on the first command
    as a ``redis.ConnectionError``.
    """
    target = parse_redis_url(url)
    if not target.is_sentinel:
        return redis.Redis.from_url(
            url,
            client_name=name,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_keepalive=True,
            retry=_no_retry(),
            decode_responses=True,
        )
    options = dict(target.options)
    sentinel_timeout = target.sentinel_timeout_s
    if sentinel_timeout is None:
        sentinel_timeout = (
            DEFAULT_SENTINEL_TIMEOUT_S if timeout_s is None else min(timeout_s, DEFAULT_SENTINEL_TIMEOUT_S)
        )
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": sentinel_timeout,
        "socket_connect_timeout": sentinel_timeout,
        "socket_keepalive": True,
        "retry": _no_retry(),
        "client_name": name,
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    if target.sentinel_ssl:
        sentinel_kwargs.update(ssl=True, **_tls_kwargs(options))
    sentinel = ConciseSentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    node_kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout", timeout_s),
        "socket_connect_timeout": options.get("socket_connect_timeout", timeout_s),
        "socket_keepalive": True,
        "retry": _no_retry(),
        "client_name": name,
        "username": target.username,
        "password": target.password,
        "db": target.db,
        "decode_responses": True,
        "connection_class": MasterSSLConnection if target.ssl else MasterConnection,
    }
    if target.ssl:
        node_kwargs.update(_tls_kwargs(options))
    client = sentinel.master_for(target.master, redis_class=SentinelRedis, **node_kwargs)
    client.sentinel_client = sentinel
    return client


__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "DEFAULT_SENTINEL_TIMEOUT_S",
    "ConciseSentinel",
    "MasterConnection",
    "RedisTarget",
    "SentinelRedis",
    "make_client",
    "parse_redis_url",
    "redact_redis_url",
]
