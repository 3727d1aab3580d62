"""POST /signals under malformed bodies, headers and paths: never a 5xx, never half-written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool
from starlette.testclient import TestClient

from coordinator.config import ElectionConfig
from coordinator.service import Coordinator
from db.session import SessionLimits, make_pool
from engine.positions.rules import parse_manage
from engine.signal import intent_from_payload, parse_signal
from haexec.http import MAX_BODY_BYTES, build_app

TOKEN = "s3cret-token"


@dataclass
class StubReplica:
    coordinator: Coordinator
    engine_pool: ConnectionPool
    api_token: str | None
    ready: bool = True

    def health_extra(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def client(redis_url: str, database_url: str) -> Iterator[tuple[TestClient, ConnectionPool, str]]:
    cluster = "fuzz"
    pool = make_pool(database_url, SessionLimits(2000, "fuzz"), name="fuzz", max_size=4)
    pool.open(wait=True, timeout=10)
    coord = Coordinator(ElectionConfig.for_lease(cluster, "fuzz", 3000), redis_url, database_url)
    app = build_app(StubReplica(coord, pool, TOKEN))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, pool, cluster
    pool.close()


def count(pool: ConnectionPool, cluster: str) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (cluster,)).fetchone()[0]


AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = {"source": "f", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.1", "price": "1.1", "sl": "1"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
field_values = st.one_of(json_values, st.sampled_from(["buy", "sell", "market", "limit", "1.1", "-1", "1e999", ""]))
mutated = st.fixed_dictionaries({}, optional={k: field_values for k in [*GOOD, "tp", "risk_pct", "expires_at", "meta"]})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated.map(lambda v: json.dumps(v).encode()),
    )
)
def test_malformed_bodies_never_5xx_and_write_nothing(client: tuple, body: bytes) -> None:
    c, pool, cluster = client
    before = count(pool, cluster)
    r = c.post("/signals", content=body, headers=AUTH)
    assert r.status_code < 500, r.text
    if r.status_code not in (200, 202):
        assert count(pool, cluster) == before
        assert r.json()["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.dictionaries(
        st.sampled_from(["Authorization", "Content-Type", "Content-Length", "X-Other"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        max_size=3,
    )
)
def test_malformed_headers_never_5xx(client: tuple, headers: dict[str, str]) -> None:
    c, pool, cluster = client
    before = count(pool, cluster)
    try:
        r = c.post("/signals", content=json.dumps(GOOD).encode(), headers=headers)
    except Exception:  # the client itself refused to send an impossible header (e.g. Content-Length)
        return
    assert r.status_code < 500
    if r.status_code not in (200, 202):
        assert count(pool, cluster) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"), max_size=80))
def test_malformed_paths_never_5xx(client: tuple, path: str) -> None:
    c, _, _ = client
    assert c.get(f"/signals/{path}").status_code < 500


def test_answers_for_each_kind_of_bad_request(client: tuple) -> None:
    c, pool, cluster = client
    assert c.post("/signals", json=GOOD).status_code == 401
    assert c.post("/signals", json=GOOD, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/signals", content=b"{", headers=AUTH).status_code == 400
    big = json.dumps({**GOOD, "meta": {"x": "y" * MAX_BODY_BYTES}}).encode()
    assert c.post("/signals", content=big, headers=AUTH).status_code == 413
    bad = c.post("/signals", json={**GOOD, "side": "hold", "sl": "2"}, headers=AUTH)
    assert bad.status_code == 422 and set(bad.json()["errors"]) >= {"side"}
    first = c.post("/signals", json={**GOOD, "signal_id": "one"}, headers=AUTH)
    assert first.status_code == 202 and first.json()["duplicate"] is False
    again = c.post("/signals", json={**GOOD, "signal_id": "one"}, headers=AUTH)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["fingerprint"] == first.json()["fingerprint"]
    reused = c.post("/signals", json={**GOOD, "signal_id": "one", "volume": "0.2"}, headers=AUTH)
    assert reused.status_code == 409
    assert reused.json() == {
        "error": "signal_id reused with a different trade intent",
        "fingerprint": first.json()["fingerprint"],
    }  # a conflict, not a duplicate: no "duplicate" and no status of a signal it is not
    shown = c.get(f"/signals/{first.json()['fingerprint']}")
    assert shown.status_code == 200 and shown.json()["status"] == "received"
    assert [e["status"] for e in shown.json()["events"]] == ["received"]
    assert c.get("/signals/" + "0" * 64).status_code == 404
    assert c.post("/signals", json={**GOOD, "price": 1.1, "sl": 1.0}, headers=AUTH).status_code == 202
    assert count(pool, cluster) == 2


def test_a_manage_block_is_stored_read_back_and_part_of_the_trade(client: tuple) -> None:
    c, pool, cluster = client
    manage = {"breakeven": {"at_rr": 1}, "trailing": {"distance_points": 150, "activation_rr": 1.5}}
    body = {**GOOD, "signal_id": "managed", "manage": manage}
    first = c.post("/signals", json=body, headers=AUTH)
    assert first.status_code == 202, first.text
    assert c.post("/signals", json=body, headers=AUTH).status_code == 200
    other = c.post("/signals", json={**body, "manage": {"breakeven": {"at_rr": 2}}}, headers=AUTH)
    assert other.status_code == 409  # the same id with other rules is another trade
    with pool.connection() as conn:
        (payload,) = conn.execute(
            "SELECT payload FROM signals WHERE cluster = %s AND fingerprint = %s",
            (cluster, first.json()["fingerprint"]),
        ).fetchone()
    assert intent_from_payload(payload) == parse_signal(body)  # through jsonb and back
    assert parse_manage(payload["manage"]) == parse_manage(manage)
