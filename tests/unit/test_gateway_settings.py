"""Settings for the gateway: the replica's HAEXEC_BROKER=gateway and `haexec gateway`'s own.
Every broken rule is one line naming the variable; no secret shows in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from haexec import settings
from haexec.gateway import settings as gateway_settings

REPLICA = {"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_BROKER": "gateway"}
GATEWAY = {"HAEXEC_DATABASE_URL": "postgresql://db/haexec", "HAEXEC_GATEWAY_TOKEN": "s3cret-token"}


def error(load: object, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load(env)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_replica_reaches_the_gateway_by_url_and_token() -> None:
    s = settings.load({**REPLICA, "HAEXEC_GATEWAY_URL": "https://gw.internal:8790", "HAEXEC_GATEWAY_TOKEN": " t0k "})
    assert s.engine.broker == "gateway" and s.engine.gateway_url == "https://gw.internal:8790"
    assert s.engine.gateway_token == "t0k"
    assert s.engine.broker_deadline_ms == 1500  # lease / 2, as for mt5
    assert "t0k" not in repr(s) and "t0k" not in repr(s.engine)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HAEXEC_GATEWAY_TOKEN": "t"}, "HAEXEC_GATEWAY_URL"),
        ({"HAEXEC_GATEWAY_URL": "gw:8790", "HAEXEC_GATEWAY_TOKEN": "t"}, "HAEXEC_GATEWAY_URL"),
        ({"HAEXEC_GATEWAY_URL": "http://gw:99999", "HAEXEC_GATEWAY_TOKEN": "t"}, "HAEXEC_GATEWAY_URL"),
        ({"HAEXEC_GATEWAY_URL": "http://gw:8790/v1", "HAEXEC_GATEWAY_TOKEN": "t"}, "HAEXEC_GATEWAY_URL"),
        ({"HAEXEC_GATEWAY_URL": "http://gw:8790"}, "HAEXEC_GATEWAY_TOKEN"),
        ({"HAEXEC_GATEWAY_URL": "http://gw:8790", "HAEXEC_GATEWAY_TOKEN": "  "}, "HAEXEC_GATEWAY_TOKEN"),
        (
            {"HAEXEC_GATEWAY_URL": "https://gw:8790", "HAEXEC_GATEWAY_TOKEN": "t", "HAEXEC_GATEWAY_CA": "/no/ca.pem"},
            "HAEXEC_GATEWAY_CA",
        ),
    ],
)
def test_a_replica_with_a_bad_gateway_setting_names_it(env: dict[str, str], variable: str) -> None:
    assert error(settings.load, {**REPLICA, **env}).startswith(f"{variable}: ")


def test_market_data_through_the_gateway_takes_the_same_url_token_and_ca() -> None:
    market_only = {"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_BROKER": "paper", "HAEXEC_MARKET": "gateway"}
    s = settings.load({**market_only, "HAEXEC_GATEWAY_URL": "http://gw:8790", "HAEXEC_GATEWAY_TOKEN": "t0k"})
    assert s.engine.market.source == "gateway" and s.engine.gateway_url == "http://gw:8790"
    assert s.engine.gateway_token == "t0k" and "t0k" not in repr(s.engine)
    assert error(settings.load, {**market_only, "HAEXEC_GATEWAY_URL": "http://gw:8790"}).startswith(
        "HAEXEC_GATEWAY_TOKEN: is required with HAEXEC_BROKER=gateway or HAEXEC_MARKET=gateway"
    )
    assert error(settings.load, market_only).startswith("HAEXEC_GATEWAY_URL: ")
    assert settings.load({**market_only, "HAEXEC_MARKET": "sim"}).engine.gateway_url is None


def test_the_gateway_defaults() -> None:
    g = gateway_settings.load(GATEWAY)
    assert (g.host, g.port, g.scheme) == ("127.0.0.1", 8790, "http")
    assert g.deadline_ms == 1000 and g.cluster == "default" and g.state_dir == Path(".haexec-gateway")
    assert not g.exposed_in_plaintext and g.journal_days == 30
    assert "s3cret-token" not in repr(g)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HAEXEC_GATEWAY_TOKEN": ""}, "HAEXEC_GATEWAY_TOKEN"),
        ({"HAEXEC_GATEWAY_TOKEN": "two words"}, "HAEXEC_GATEWAY_TOKEN"),
        ({"HAEXEC_DATABASE_URL": ""}, "HAEXEC_DATABASE_URL"),
        ({"HAEXEC_DATABASE_URL": "mysql://db"}, "HAEXEC_DATABASE_URL"),
        ({"HAEXEC_GATEWAY_HTTP": "10.0.0.5:8790"}, "HAEXEC_GATEWAY_HTTP"),
        ({"HAEXEC_GATEWAY_HTTP": "nonsense"}, "HAEXEC_GATEWAY_HTTP"),
        ({"HAEXEC_GATEWAY_TLS_CERT": "/no/cert.pem"}, "HAEXEC_GATEWAY_TLS_KEY"),
        ({"HAEXEC_GATEWAY_TLS_CERT": "/no/c.pem", "HAEXEC_GATEWAY_TLS_KEY": "/no/k.pem"}, "HAEXEC_GATEWAY_TLS_CERT"),
        ({"HAEXEC_GATEWAY_DEADLINE_MS": "0"}, "HAEXEC_GATEWAY_DEADLINE_MS"),
        ({"HAEXEC_GATEWAY_PROBE_MS": "5"}, "HAEXEC_GATEWAY_PROBE_MS"),
        ({"HAEXEC_GATEWAY_JOURNAL_DAYS": "0"}, "HAEXEC_GATEWAY_JOURNAL_DAYS"),
        ({"HAEXEC_GATEWAY_JOURNAL_DAYS": "36501"}, "HAEXEC_GATEWAY_JOURNAL_DAYS"),
        ({"HAEXEC_CLUSTER": "a:b"}, "HAEXEC_CLUSTER"),
        ({"HAEXEC_MT5_LOGIN": "me"}, "HAEXEC_MT5_LOGIN"),
    ],
)
def test_a_gateway_with_a_bad_setting_names_it(env: dict[str, str], variable: str) -> None:
    assert error(gateway_settings.load, {**GATEWAY, **env}).startswith(f"{variable}: ")


def test_a_tls_pair_that_does_not_load_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    env = {**GATEWAY, "HAEXEC_GATEWAY_TLS_CERT": str(cert), "HAEXEC_GATEWAY_TLS_KEY": str(key)}
    assert error(gateway_settings.load, env).startswith("HAEXEC_GATEWAY_TLS_CERT: certificate and key do not load")


def test_plaintext_off_loopback_only_when_asked_for() -> None:
    g = gateway_settings.load(
        {**GATEWAY, "HAEXEC_GATEWAY_HTTP": "0.0.0.0:8790", "HAEXEC_GATEWAY_ALLOW_PLAINTEXT": "yes"}
    )
    assert g.exposed_in_plaintext and g.plaintext_opt_out
