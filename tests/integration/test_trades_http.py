"""POST/GET/DELETE /trades on build_app with real PostgreSQL and the paper broker: 201 new,
200 the same again, 409 other rules, 422 naming each bad field, 404, 401 without the token;
DELETE stops the management and leaves the stop at the venue."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.brokers.paper import PaperBroker
from engine.positions.registration import Registrar
from haexec.http import build_app
from tests.integration.test_executor import Rig, rig  # noqa: F401 (rig is a fixture)
from tests.integration.test_http_server import StubCoordinator
from tests.integration.test_paper import lead
from tests.positions_support import D, open_buy, venue_sl

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class TradesReplica:
    registrar: Registrar
    api_token: str | None = TOKEN
    coordinator: StubCoordinator = field(default_factory=StubCoordinator)
    engine_pool: Any = None
    ready: bool = True
    market: Any = None
    market_max_age_ms: int = 5000

    def health_extra(self) -> dict[str, str]:
        return {}

    def kill_switch(self) -> dict[str, Any] | None:
        return None

    def market_health(self) -> str:
        return "ok"

    def positions_health(self) -> dict[str, Any]:
        return {"state": "not leading"}

    def loops(self) -> dict[str, dict[str, object]]:
        return {}


@pytest.fixture
def client(rig: Rig) -> Iterator[tuple[TestClient, PaperBroker, int]]:  # noqa: F811
    broker = PaperBroker(rig.pool, rig.cluster, "leader")
    broker.connect()
    replica = TradesReplica(Registrar(rig.pool, broker, rig.cluster, "paper", "r1", {}))
    with TestClient(build_app(replica)) as c:  # type: ignore[arg-type]
        yield c, broker, lead(rig.pool, rig.cluster, "leader")


def test_the_trade_routes(client: tuple[TestClient, PaperBroker, int]) -> None:
    c, broker, epoch = client
    ticket = open_buy(broker, epoch, "HXHTTP1", sl="1.09000")
    body = {
        "ticket": ticket,
        "manage": {"breakeven": {"at_rr": 1}, "trailing": {"distance_points": 150, "activation_rr": 1.5}},
    }
    assert c.post("/trades", json=body).status_code == 401
    first = c.post("/trades", json=body, headers=AUTH)
    assert first.status_code == 201, first.text
    assert first.json()["initial_sl"] == "1.09000" and first.json()["managed"] is True
    assert c.post("/trades", json=body, headers=AUTH).status_code == 200
    other = c.post("/trades", json={"ticket": ticket, "manage": {"breakeven": {"at_rr": 2}}}, headers=AUTH)
    assert other.status_code == 409
    bad = c.post("/trades", json={"ticket": 1.5, "manage": {"lock": "x"}}, headers=AUTH)
    assert bad.status_code == 422 and set(bad.json()["errors"]) == {"ticket", "manage.lock"}
    assert c.post("/trades", json={"ticket": "99999"}, headers=AUTH).status_code == 404
    assert c.post("/trades", content=b"{", headers=AUTH).status_code == 400
    listed = c.get("/trades").json()["trades"]
    assert [t["ticket"] for t in listed] == [ticket]
    shown = c.get(f"/trades/{ticket}").json()
    assert [j["kind"] for j in shown["journal"]] == ["registered"]
    assert c.get("/trades/nothing").status_code == 404
    assert c.delete(f"/trades/{ticket}").status_code == 401
    gone = c.delete(f"/trades/{ticket}", headers=AUTH)
    assert gone.status_code == 200 and gone.json()["managed"] is False
    assert c.delete(f"/trades/{ticket}", headers=AUTH).status_code == 404
    assert c.get("/trades").json()["trades"] == []
    assert venue_sl(broker, ticket) == D("1.09000")
    assert c.get("/health").json()["positions"] == {"state": "not leading"}
