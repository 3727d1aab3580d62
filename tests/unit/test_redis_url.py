"""Redis URLs: parsing, redaction, one-line errors, and the clients made from them (no server)."""

from __future__ import annotations

import pytest
import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from common.errors import ConfigError
from coordinator.lease import redis_client
from coordinator.redis_url import (
    DEFAULT_SENTINEL_PORT,
    DEFAULT_SENTINEL_TIMEOUT_S,
    MasterConnection,
    MasterSSLConnection,
    SentinelRedis,
    _not_a_writable_master,
    make_client,
    parse_redis_url,
    redact_redis_url,
)
from haexec import settings
from tests.support import free_port

SECRET = "hunter2"


# ---- parsing ----


@pytest.mark.parametrize(
    ("url", "host", "port", "db"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1", 6379, 0),
        ("redis://h", "h", 6379, 0),
        ("redis://h:6380/3", "h", 6380, 3),
        ("redis://h:6380/?db=5", "h", 6380, 5),
        ("rediss://u:p@redis.example:6380", "redis.example", 6380, 0),
        ("redis://[::1]:7000/1", "::1", 7000, 1),
    ],
)
def test_direct_urls(url: str, host: str, port: int, db: int) -> None:
    target = parse_redis_url(url)
    assert (target.host, target.port, target.db) == (host, port, db)
    assert not target.is_sentinel
    assert target.ssl == url.startswith("rediss://")


def test_unix_url() -> None:
    target = parse_redis_url("unix:///run/redis/redis.sock?db=2")
    assert target.path == "/run/redis/redis.sock"
    assert target.db == 2
    assert target.host is None


def test_sentinel_url_full() -> None:
    target = parse_redis_url(
        f"redis+sentinel://app:{SECRET}@10.0.0.1:26379,sentinel-b:26380,[fd00::3]:26381/my%20master/4"
        f"?sentinel_password={SECRET}&sentinel_username=watcher&socket_timeout=0.4&sentinel_timeout=0.2"
    )
    assert target.is_sentinel
    assert target.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("fd00::3", 26381))
    assert target.master == "my master"
    assert target.db == 4
    assert (target.username, target.password) == ("app", SECRET)
    assert (target.sentinel_username, target.sentinel_password) == ("watcher", SECRET)
    assert target.sentinel_timeout_s == 0.2
    assert dict(target.options) == {"socket_timeout": 0.4}
    assert not target.ssl and not target.sentinel_ssl


def test_sentinel_url_minimal_and_default_port() -> None:
    target = parse_redis_url("redis+sentinel://s1,s2:1234/mymaster")
    assert target.sentinels == (("s1", DEFAULT_SENTINEL_PORT), ("s2", 1234))
    assert target.master == "mymaster"
    assert target.db == 0
    assert target.username is None and target.password is None


def test_sentinel_trailing_slash_and_password_only() -> None:
    target = parse_redis_url(f"redis+sentinel://:{SECRET}@s1:1/m/")
    assert target.master == "m"
    assert (target.username, target.password) == (None, SECRET)


def test_sentinel_password_with_reserved_characters() -> None:
    # '@' and '/' in a password: the userinfo ends at the last '@'.
    target = parse_redis_url("redis+sentinel://u:p@ss/w%3Ard@s1:1/m")
    assert target.password == "p@ss/w:rd"
    assert target.sentinels == (("s1", 1),)


def test_tls_forms() -> None:
    a = parse_redis_url("rediss+sentinel://s1:1/m?ssl_ca_certs=/etc/ca.pem")
    b = parse_redis_url("redis+sentinel://s1:1/m?ssl=1&ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required")
    assert a.ssl and a.sentinel_ssl and b.ssl and b.sentinel_ssl
    assert dict(a.options) == {"ssl_ca_certs": "/etc/ca.pem"}
    only_nodes = parse_redis_url("rediss+sentinel://s1:1/m?sentinel_ssl=0")
    assert only_nodes.ssl and not only_nodes.sentinel_ssl
    only_sentinels = parse_redis_url("redis+sentinel://s1:1/m?sentinel_ssl=yes")
    assert not only_sentinels.ssl and only_sentinels.sentinel_ssl


def test_scheme_is_case_insensitive() -> None:
    assert parse_redis_url("Redis+Sentinel://s1:1/m").is_sentinel


# ---- errors: one line, ValueError, never a secret ----


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "empty"),
        ("http://h:6379", "unknown scheme http://"),
        ("localhost:6379", "has no scheme"),
        ("redis:/x", "has no scheme"),
        ("://h", "has no scheme"),
        ("sentinel://s1:1/m", "unknown scheme sentinel://"),
        ("redis://", "no host"),
        (f"redis://:{SECRET}@", "no host"),
        ("redis://h:0/0", "port"),
        ("redis://h:99999/0", "port"),
        ("redis://h:abc/0", "port"),
        ("redis://h/abc", "database number"),
        ("unix://", "socket path"),
        ("redis+sentinel:///m", "names no sentinel"),
        ("redis+sentinel://s1:1", "names no master"),
        ("redis+sentinel://s1:1/", "names no master"),
        ("redis+sentinel://s1:1//0", "names no master"),
        ("redis+sentinel://s1:1,:2/m", "sentinel 2: no host"),
        ("redis+sentinel://s1:1,s2:/m", "sentinel 2: port"),
        ("redis+sentinel://s1:1,s2:x/m", "sentinel 2: port"),
        ("redis+sentinel://s1:1,,s3:3/m", "sentinel 2: no host"),
        ("redis+sentinel://[::1:1/m", "IPv6"),
        ("redis+sentinel://s1:1/m/x", "must be a number"),
        ("redis+sentinel://s1:1/m/0/extra", "/<master-name>[/<db>]"),
        (
            "redis+sentinel://s1:1/m?sentinel_pasword=x",
            "unknown option (the 1st in the query; did you mean 'sentinel_password'?)",
        ),
        ("redis+sentinel://s1:1/m?ssl=1&zzz=1", "unknown option (the 2nd in the query; known: sentinel_timeout"),
        ("redis+sentinel://s1:1/m?socket_timeout=soon", "socket_timeout"),
        ("redis+sentinel://s1:1/m?sentinel_timeout=0", "sentinel_timeout"),
        ("redis+sentinel://s1:1/m?ssl=maybe", "'ssl'"),
        ("redis+sentinel://s1:1/m?ssl=1&ssl=0", "more than once"),
        ("redis+sentinel://s1:1/m?ssl_ca_certs=/ca.pem", "need TLS"),
        ("redis+sentinel://s1:1/m?ssl=1&ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
        ("rediss+sentinel://s1:1/m?ssl=0", "contradicts"),
        ("redis+sentinel://s1:1/m#frag", "fragment"),
        ("redis+sentinel://s1 :1/m", "whitespace"),
    ],
)
def test_malformed_urls(url: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    message = str(info.value)
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://u:{SECRET}@s1:{SECRET}/m",  # a mistyped URL: the password lands in the port
        f"redis+sentinel://:{SECRET}@s1:1/m?{SECRET}=1",
        f"redis+sentinel://s1:1/m?sentinel_password={SECRET}&ssl_cert_reqs={SECRET}",
        f"redis://:{SECRET}@h:{SECRET}/0",
        f"redis:{SECRET}@h:6379",
        f"redis+sentinel://s1:1/m?sentinel_timeout={SECRET}",
        f"redis+sentinel://s1:1/m?sentinel_password=ab&{SECRET}=x",  # an unencoded '&' in a password
    ],
)
def test_errors_never_show_what_could_be_a_secret(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert SECRET not in str(info.value)


# ---- redaction ----


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://app:{SECRET}@h", "rediss://app:***@h"),
        ("redis://app@h", "redis://app@h"),
        (
            f"redis+sentinel://app:{SECRET}@s1:1,s2:2/m/0?sentinel_password={SECRET}&ssl=1",
            "redis+sentinel://app:***@s1:1,s2:2/m/0?sentinel_password=***&ssl=1",
        ),
        (f"redis+sentinel://u:p@ss/{SECRET}@s1:1/m", "redis+sentinel://u:***@s1:1/m"),
        (f"redis://h/0?password={SECRET}", "redis://h/0?password=***"),
        (
            f"not a url :{SECRET}@ at all?sentinel_password={SECRET}",
            "not a url :{SECRET}@ at all?sentinel_password=***",
        ),
    ],
)
def test_redaction(url: str, shown: str) -> None:
    assert redact_redis_url(url) == shown.replace("{SECRET}", SECRET)


def test_target_never_shows_secrets() -> None:
    target = parse_redis_url(f"redis+sentinel://app:{SECRET}@s1:1/m?sentinel_password={SECRET}")
    assert SECRET not in str(target)
    assert SECRET not in repr(target)
    assert str(target) == "redis+sentinel://app:***@s1:1/m?sentinel_password=***"


# ---- settings: a bad URL is a ConfigError naming HAEXEC_REDIS_URL ----


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:1",
        "redis+sentinel://s1:x/m",
        "redis+sentinel:///m",
        "redis://",
        "ftp://h",
        f"redis+sentinel://:{SECRET}@s1:1/m?bogus={SECRET}",
    ],
)
def test_settings_reject_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_REDIS_URL": url})
    assert info.value.setting == "HAEXEC_REDIS_URL"
    assert str(info.value).startswith("HAEXEC_REDIS_URL: ")
    assert "\n" not in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster",
        "rediss+sentinel://:pw@s1:26379/mymaster/2?sentinel_password=pw&ssl_ca_certs=/ca.pem",
    ],
)
def test_settings_accept_sentinel_urls(url: str) -> None:
    assert settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_REDIS_URL": url}).redis_url == url


# ---- clients (built without connecting) ----


def _kwargs(client: redis.Redis) -> dict[str, object]:
    return client.connection_pool.connection_kwargs


def _assert_no_retries(client: redis.Redis) -> None:
    retry = _kwargs(client)["retry"]
    assert retry.get_retries() == 0


def test_direct_client_properties() -> None:
    client = make_client("redis://127.0.0.1:6379/3", 0.25, "haexec-ha-r1")
    kwargs = _kwargs(client)
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 6379 and kwargs["db"] == 3
    assert kwargs["socket_timeout"] == 0.25 and kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["socket_keepalive"] is True
    assert kwargs["client_name"] == "haexec-ha-r1"
    assert kwargs["decode_responses"] is True
    _assert_no_retries(client)
    client.close()


def test_direct_tls_and_unix_clients() -> None:
    assert make_client("rediss://h:6380", 1.0).connection_pool.connection_class is SSLConnection
    assert make_client("unix:///tmp/r.sock", 1.0).connection_pool.connection_class is UnixDomainSocketConnection


def test_lease_redis_client_delegates() -> None:
    client = redis_client("redis+sentinel://127.0.0.1:1/mymaster", 0.3, "haexec-side-r1")
    assert isinstance(client, SentinelRedis)
    assert isinstance(client.connection_pool, SentinelConnectionPool)


def test_sentinel_client_properties() -> None:
    url = f"redis+sentinel://app:{SECRET}@127.0.0.1:1,127.0.0.1:2/mymaster/5?sentinel_password=sp"
    client = make_client(url, 0.25, "haexec-ha-r1")
    assert isinstance(client, SentinelRedis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master
    assert pool.service_name == "mymaster"
    assert pool.connection_class is MasterConnection
    kwargs = _kwargs(client)
    assert kwargs["socket_timeout"] == 0.25 and kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["socket_keepalive"] is True
    assert kwargs["client_name"] == "haexec-ha-r1"
    assert kwargs["decode_responses"] is True
    assert kwargs["db"] == 5
    assert (kwargs["username"], kwargs["password"]) == ("app", SECRET)
    _assert_no_retries(client)
    assert client.sentinel_client is not None
    sentinels = client.sentinel_client.sentinels
    assert [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ] == [
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
    ]
    for s in sentinels:
        skw = s.connection_pool.connection_kwargs
        assert skw["socket_timeout"] == 0.25 and skw["socket_connect_timeout"] == 0.25
        assert skw["password"] == "sp"
        assert skw["retry"].get_retries() == 0
    client.close()
    assert client.sentinel_client is None


def test_sentinel_timeouts() -> None:
    # No timeout (a pub/sub listener blocks on reads): the sentinels still get a short one.
    listener = make_client("redis+sentinel://127.0.0.1:1/m", None, "events")
    assert _kwargs(listener)["socket_timeout"] is None
    assert (
        listener.sentinel_client.sentinels[0].connection_pool.connection_kwargs["socket_timeout"]
        == DEFAULT_SENTINEL_TIMEOUT_S
    )
    slow = make_client("redis+sentinel://127.0.0.1:1/m", 5.0, "x")
    assert (
        slow.sentinel_client.sentinels[0].connection_pool.connection_kwargs["socket_timeout"]
        == DEFAULT_SENTINEL_TIMEOUT_S
    )
    explicit = make_client("redis+sentinel://127.0.0.1:1/m?sentinel_timeout=0.1&socket_timeout=0.7", 0.25, "x")
    assert explicit.sentinel_client.sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 0.1
    assert _kwargs(explicit)["socket_timeout"] == 0.7
    assert _kwargs(explicit)["socket_connect_timeout"] == 0.25


def test_sentinel_tls_client() -> None:
    client = make_client("rediss+sentinel://127.0.0.1:1/m?ssl_ca_certs=/ca.pem&sentinel_ssl=0", 0.25, "x")
    assert client.connection_pool.connection_class is MasterSSLConnection
    assert _kwargs(client)["ssl_ca_certs"] == "/ca.pem"
    sentinel_pool = client.sentinel_client.sentinels[0].connection_pool
    assert not issubclass(sentinel_pool.connection_class, SSLConnection)


def test_unreachable_sentinels_fail_fast_with_one_short_line() -> None:
    ports = [free_port(), free_port()]
    client = make_client(f"redis+sentinel://:{SECRET}@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/mymaster", 0.25, "x")
    with pytest.raises(MasterNotFoundError) as info:
        client.ping()
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "mymaster" in message and str(ports[0]) in message and str(ports[1]) in message
    assert SECRET not in message
    assert isinstance(info.value, redis.ConnectionError)  # what every caller already catches
    client.close()


def test_make_client_rejects_bad_url() -> None:
    with pytest.raises(ValueError, match="names no master"):
        make_client("redis+sentinel://s1:1", 1.0)


# ---- which errors make a Sentinel client look the master up again ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("READONLY You can't write against a read only replica.", True),
        (
            "Error running script (call to f_cd25): @user_script:4: @user_script: 4: "
            "-READONLY You can't write against a read only replica.",
            True,
        ),
        ("READONLY You can't write against a read only replica. script: bf81c7, on @user_script:1.", True),
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("Error running script (call to f_x): @user_script:4: -NOREPLICAS Not enough good replicas to write.", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("ERR value is not an integer or out of range", False),
        ("Error running script (call to f_x): @user_script:1: user_script:1: READONLY is a word here", False),
    ],
)
def test_not_a_writable_master(text: str, expected: bool) -> None:
    assert _not_a_writable_master(redis.ResponseError(text)) is expected
