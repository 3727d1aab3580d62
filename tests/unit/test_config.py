"""ElectionConfig's start-up rules and haexec.settings.load: every broken rule is a
ConfigError whose message names the setting (the environment variable, for load)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from common.errors import ConfigError
from coordinator.config import MAX_TIMER_MS, ElectionConfig
from haexec import settings

MS_FIELDS = [f.name for f in fields(ElectionConfig) if f.name.endswith("_ms")]


def cfg(**overrides: object) -> ElectionConfig:
    return ElectionConfig(cluster="c", instance_id="i", **overrides)  # type: ignore[arg-type]


def raises_naming(setting: str, **overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg(**overrides)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")
    assert "\n" not in str(info.value)
    return info.value


# ---- ElectionConfig ----


def test_defaults_valid() -> None:
    c = cfg()
    assert (c.lease_ms, c.renew_deadline_ms, c.renew_ms) == (3000, 2000, 1000)
    assert c.stale_after_ms >= c.lease_ms
    assert c.trusted_ms == c.lease_ms - c.drift_margin_ms
    c.validate()


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        cfg().lease_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", MS_FIELDS)
@pytest.mark.parametrize("bad", [0, -1, 1.5, "1000", None])
def test_timers_positive_integers(name: str, bad: object) -> None:
    error = raises_naming(name, **{name: bad})
    assert "positive integer" in error.rule


@pytest.mark.parametrize("name", MS_FIELDS)
def test_timers_at_most_a_day(name: str) -> None:
    error = raises_naming(name, **{name: MAX_TIMER_MS + 1})
    assert f"at most {MAX_TIMER_MS}" in error.rule


def test_lease_greater_than_renew_deadline() -> None:
    raises_naming("lease_ms", lease_ms=2000, renew_deadline_ms=2000)
    raises_naming("lease_ms", lease_ms=1999, renew_deadline_ms=2000)


def test_renew_deadline_greater_than_1_2_renew() -> None:
    cfg(renew_ms=1666)  # 2000 > 1999.2
    error = raises_naming("renew_deadline_ms", renew_ms=1667)
    assert "1.2" in error.rule


def test_renew_deadline_within_trusted_lease() -> None:
    cfg(drift_margin_ms=1000)  # 2000 <= 3000 - 1000
    error = raises_naming("renew_deadline_ms", drift_margin_ms=1001)
    assert "drift_margin_ms" in error.rule


def test_stale_after_at_least_lease() -> None:
    cfg(stale_after_ms=3000)
    raises_naming("stale_after_ms", stale_after_ms=2999)


def test_db_grace_below_stale_after() -> None:
    cfg(db_grace_ms=2999)
    raises_naming("db_grace_ms", db_grace_ms=3000)


def test_db_timeout_below_trusted_lease() -> None:
    ok = dict(stale_after_ms=5000, db_grace_ms=4000)
    cfg(db_timeout_ms=2899, **ok)
    error = raises_naming("db_timeout_ms", db_timeout_ms=2900, **ok)
    assert "lease_ms - drift_margin_ms" in error.rule


def test_db_timeout_within_db_grace() -> None:
    cfg(db_timeout_ms=1000, db_grace_ms=1000)
    error = raises_naming("db_timeout_ms", db_timeout_ms=1500, db_grace_ms=1400)
    assert "db_grace_ms" in error.rule


@pytest.mark.parametrize("cluster", ["", "a:b", "a{b", "a}b"])
def test_cluster_name_rules(cluster: str) -> None:
    with pytest.raises(ConfigError) as info:
        ElectionConfig(cluster=cluster, instance_id="i")
    assert info.value.setting == "cluster"


@pytest.mark.parametrize("instance", ["", "a b", "a|b", "a:b"])
def test_instance_id_rules(instance: str) -> None:
    with pytest.raises(ConfigError) as info:
        ElectionConfig(cluster="c", instance_id=instance)
    assert info.value.setting == "instance_id"


def test_for_lease_default_equals_defaults() -> None:
    assert ElectionConfig.for_lease("c", "i", 3000) == cfg()


def test_for_lease_scales() -> None:
    c = ElectionConfig.for_lease("c", "i", 9000)
    assert (c.lease_ms, c.renew_deadline_ms, c.renew_ms, c.drift_margin_ms) == (9000, 6000, 3000, 300)
    assert (c.stale_after_ms, c.db_grace_ms, c.db_timeout_ms) == (9000, 6000, 3000)
    assert (c.cooldown_ms, c.handoff_ms) == (3000, 3000)


@pytest.mark.parametrize("lease", [60, 100, 1000, 3000, 10_000, 60_000])
def test_for_lease_valid_across_range(lease: int) -> None:
    c = ElectionConfig.for_lease("c", "i", lease)
    assert c.lease_ms == lease
    assert c.drift_margin_ms >= 20


def test_for_lease_too_short_names_rule() -> None:
    with pytest.raises(ConfigError) as info:
        ElectionConfig.for_lease("c", "i", 50)
    assert info.value.setting == "renew_deadline_ms"


def test_for_lease_overrides() -> None:
    c = ElectionConfig.for_lease("c", "i", 3000, stale_after_ms=6000, renew_ms=500)
    assert (c.stale_after_ms, c.renew_ms, c.renew_deadline_ms) == (6000, 500, 2000)
    with pytest.raises(ConfigError) as info:
        ElectionConfig.for_lease("c", "i", 3000, stale_after_ms=1000)
    assert info.value.setting == "stale_after_ms"


# ---- haexec.settings.load ----


def load_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        settings.load(env)
    return str(info.value)


def test_load_defaults() -> None:
    s = settings.load({"HAEXEC_INSTANCE_ID": "r1"})
    assert s.election == ElectionConfig.for_lease("default", "r1", 3000)
    assert (s.http_host, s.http_port, s.broker) == ("127.0.0.1", 8701, "paper")
    assert s.embedded and s.api_token is None
    assert s.startup_timeout_s == 30


def test_load_full() -> None:
    s = settings.load(
        {
            "HAEXEC_CLUSTER": "prod",
            "HAEXEC_INSTANCE_ID": "r2",
            "HAEXEC_REDIS_URL": "rediss://redis.example:6380/0",
            "HAEXEC_DATABASE_URL": "postgresql://u:secret@db/haexec",
            "HAEXEC_HTTP": "0.0.0.0:9000",
            "HAEXEC_API_TOKEN": "s3cr3t-token",
            "HAEXEC_LEASE_MS": "6000",
            "HAEXEC_RENEW_MS": "1500",
            "HAEXEC_BROKER": "mt5",
        }
    )
    assert (s.election.cluster, s.election.instance_id) == ("prod", "r2")
    assert (s.election.lease_ms, s.election.renew_ms, s.election.renew_deadline_ms) == (6000, 1500, 4000)
    assert (s.http_host, s.http_port, s.broker) == ("0.0.0.0", 9000, "mt5")
    assert not s.embedded
    assert "s3cr3t-token" not in repr(s)


@pytest.mark.parametrize("var", sorted(settings.TIMER_ENV.values()))
@pytest.mark.parametrize("raw", ["abc", "1.5", "3s"])
def test_load_bad_integer_names_variable(var: str, raw: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", var: raw})
    assert message.startswith(f"{var}: ")
    assert "integer" in message


@pytest.mark.parametrize(
    ("var", "field"),
    [(var, field) for field, var in settings.TIMER_ENV.items() if field != "lease_ms"],
)
def test_load_zero_timer_names_variable(var: str, field: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", var: "0"})
    assert message.startswith(f"{var} ({field}): ")


def test_load_zero_lease_names_variable() -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_LEASE_MS": "0"})
    assert message.startswith("HAEXEC_LEASE_MS")


def test_load_negative_lease_names_variable() -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_LEASE_MS": "-3000"})
    assert message.startswith("HAEXEC_LEASE_MS (lease_ms): ")


def test_load_rule_across_variables_names_variable() -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_STALE_AFTER_MS": "1000"})
    assert message.startswith("HAEXEC_STALE_AFTER_MS (stale_after_ms): ")
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_LEASE_MS": "50"})
    assert message.startswith("HAEXEC_RENEW_DEADLINE_MS (renew_deadline_ms): ")


@pytest.mark.parametrize(("var", "value"), [("HAEXEC_CLUSTER", "a:b"), ("HAEXEC_INSTANCE_ID", "has space")])
def test_load_bad_names(var: str, value: str) -> None:
    env = {"HAEXEC_INSTANCE_ID": "r1", var: value}
    assert load_error(env).startswith(f"{var} (")


@pytest.mark.parametrize("url", ["http://redis:6379", "localhost:6379", "redis:/x"])
def test_load_bad_redis_url(url: str) -> None:
    assert load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_REDIS_URL": url}).startswith("HAEXEC_REDIS_URL: ")


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock"])
def test_load_good_redis_url(url: str) -> None:
    assert settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x.db", "h:5432/db"])
def test_load_bad_database_url(url: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_DATABASE_URL": url})
    assert message.startswith("HAEXEC_DATABASE_URL: ")


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgres://h/db", "postgresql+psycopg://h/db"])
def test_load_good_database_url(url: str) -> None:
    assert settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("http", ["0.0.0.0:8080", "10.1.2.3:80", "[::]:8080", "example.com:80"])
def test_load_public_http_needs_token(http: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_HTTP": http})
    assert message.startswith("HAEXEC_HTTP: ")
    assert "HAEXEC_API_TOKEN" in message
    s = settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_HTTP": http, "HAEXEC_API_TOKEN": "t"})
    assert s.api_token == "t"


@pytest.mark.parametrize(
    ("http", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), ("localhost:1", "localhost", 1), ("[::1]:9", "::1", 9)],
)
def test_load_loopback_http_without_token(http: str, host: str, port: int) -> None:
    s = settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_HTTP": http})
    assert (s.http_host, s.http_port) == (host, port)


@pytest.mark.parametrize("http", ["8080", ":8080", "h:port", "h:70000", "h:-1"])
def test_load_bad_http(http: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_HTTP": http})
    assert message.startswith("HAEXEC_HTTP: ")


@pytest.mark.parametrize("broker", ["ib", "PAPER", "mt4"])
def test_load_unknown_broker(broker: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_BROKER": broker})
    assert message.startswith("HAEXEC_BROKER: ")
    assert "paper" in message and "mt5" in message


@pytest.mark.parametrize("raw", ["0", "-5", "soon"])
def test_load_bad_startup_timeout(raw: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_STARTUP_TIMEOUT_S": raw})
    assert message.startswith("HAEXEC_STARTUP_TIMEOUT_S: ")


@pytest.mark.parametrize("raw", [" t0ken", "t0ken\n", "\tt0ken  "])
def test_load_strips_whitespace_around_the_api_token(raw: str) -> None:
    assert settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_API_TOKEN": raw}).api_token == "t0ken"


@pytest.mark.parametrize("raw", [" ", "\n", " \t "])
def test_load_blank_api_token_names_variable(raw: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_API_TOKEN": raw})
    assert message.startswith("HAEXEC_API_TOKEN: ")


def test_load_http_limits_defaults_and_overrides() -> None:
    assert settings.load({"HAEXEC_INSTANCE_ID": "r1"}).http_limits == settings.HttpLimits(256, 5000, 10000, 5000)
    s = settings.load(
        {
            "HAEXEC_INSTANCE_ID": "r1",
            "HAEXEC_HTTP_MAX_CONNECTIONS": "10",
            "HAEXEC_HTTP_HEADER_TIMEOUT_MS": "200",
            "HAEXEC_HTTP_BODY_TIMEOUT_MS": "300",
            "HAEXEC_HTTP_KEEPALIVE_MS": "400",
        }
    )
    assert s.http_limits == settings.HttpLimits(10, 200, 300, 400)


@pytest.mark.parametrize("var", list(settings.HTTP_LIMIT_ENV.values()))
@pytest.mark.parametrize("raw", ["0", "-1", "fast", "1.5"])
def test_load_bad_http_limit_names_variable(var: str, raw: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", var: raw})
    assert message.startswith(f"{var}: ") and "\n" not in message


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("HAEXEC_LEASE_MS", "99999999999999999999"),
        ("HAEXEC_LEASE_MS", str(MAX_TIMER_MS + 1)),
        ("HAEXEC_RENEW_MS", "99999999999999999999"),
        ("HAEXEC_STARTUP_TIMEOUT_S", "99999999999999999999"),
        ("HAEXEC_SWEEP_MS", "99999999999999999999"),
        ("HAEXEC_IN_DOUBT_GRACE_MS", "99999999999999999999"),
        ("HAEXEC_BROKER_DEADLINE_MS", "99999999999999999999"),
        ("HAEXEC_MT5_LOGIN", "99999999999999999999"),
        ("HAEXEC_MT5_LOGIN", "0"),
        ("HAEXEC_MT5_MAGIC", "99999999999999999999"),
        ("HAEXEC_MT5_MAGIC", "-1"),
        ("HAEXEC_RISK_MAX_OPEN_POSITIONS", "99999999999999999999"),
    ],
)
def test_load_absurd_integer_names_variable(var: str, raw: str) -> None:
    assert load_error({"HAEXEC_INSTANCE_ID": "r1", var: raw}).startswith(var)


def test_load_largest_sane_lease() -> None:
    s = settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_LEASE_MS": str(MAX_TIMER_MS)})
    assert s.election.lease_ms == MAX_TIMER_MS


@pytest.mark.parametrize("raw", ["LOUD", "verbose", "10", "NOTSET"])
def test_load_unknown_log_level_names_variable(raw: str) -> None:
    message = load_error({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_LOG_LEVEL": raw})
    assert message.startswith("HAEXEC_LOG_LEVEL: ") and "DEBUG" in message


@pytest.mark.parametrize(("raw", "level"), [("", "INFO"), ("debug", "DEBUG"), ("Warning", "WARNING"), ("WARN", "WARN")])
def test_load_log_level(raw: str, level: str) -> None:
    assert settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_LOG_LEVEL": raw}).log_level == level


def test_the_open_position_caps_drills_and_benchmarks_use_are_within_bounds() -> None:
    # both lift the cap so it never rejects a signal they count on executing
    for raw in ("100000000", "1000000"):
        s = settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_RISK_MAX_OPEN_POSITIONS": raw})
        assert s.engine.risk.max_open_positions == int(raw)


# ---- market data and the paper venue's prices ----

MARKET_BASE = {"HAEXEC_REDIS_URL": "redis://h", "HAEXEC_DATABASE_URL": "postgresql://h/d"}


def test_market_settings_default_to_the_sim_priced_paper_venue() -> None:
    engine = settings.load(MARKET_BASE).engine
    assert (engine.market.source, engine.paper_prices, engine.market_max_age_ms) == ("sim", "market", 5000)
    engine = settings.load(
        {**MARKET_BASE, "HAEXEC_PAPER_PRICES": "signal", "HAEXEC_MARKET_MAX_AGE_MS": "250", "HAEXEC_MARKET_SEED": "7"}
    ).engine
    assert (engine.paper_prices, engine.market_max_age_ms, engine.market.seed) == ("signal", 250, 7)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"HAEXEC_PAPER_PRICES": "ask"}, "HAEXEC_PAPER_PRICES"),
        ({"HAEXEC_MARKET_MAX_AGE_MS": "0"}, "HAEXEC_MARKET_MAX_AGE_MS"),
        ({"HAEXEC_MARKET_MAX_AGE_MS": "5s"}, "HAEXEC_MARKET_MAX_AGE_MS"),
        ({"HAEXEC_MARKET": "bloomberg"}, "HAEXEC_MARKET"),
        ({"HAEXEC_MARKET": "replay:/no/such/file.csv"}, "HAEXEC_MARKET"),
        ({"HAEXEC_MARKET_SYMBOLS": "EURUSD,EURUSD"}, "HAEXEC_MARKET_SYMBOLS"),
    ],
)
def test_a_bad_market_setting_names_its_variable(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings.load({**MARKET_BASE, **env})
    assert e.value.setting == setting and "\n" not in str(e.value)
