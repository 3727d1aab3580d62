"""/plans on the replica's app and `haexec plan` / `haexec news import`, on real PostgreSQL."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from starlette.testclient import TestClient

from coordinator.config import ElectionConfig
from db.session import SessionLimits, make_pool
from db.urls import libpq_url
from engine.plans import store
from engine.plans.model import parse_plan
from haexec.cli import main
from haexec.http import build_app
from tests.plans_support import StaticFencing, set_leader

TOKEN = "plan-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PLAN = {
    "plan_id": "dxy-btc-1",
    "symbol": "BTCUSD",
    "side": "buy",
    "type": "market",
    "risk_pct": "1",
    "price": "64500",
    "sl": "63200",
    "conditions": {
        "all": [
            {"type": "change_pct", "symbol": "DXY", "window": "1h", "below": "-0.3"},
            {"type": "holds_above", "symbol": "BTCUSD", "timeframe": "M15", "level": "64000", "bars": 4},
        ]
    },
}


@dataclass
class Coord:
    cfg: ElectionConfig


@dataclass
class Replica:
    engine_pool: ConnectionPool
    coordinator: Coord
    api_token: str | None = TOKEN
    market: Any = None
    market_max_age_ms: int = 5000
    ready: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def health_extra(self) -> dict[str, str]:
        return self.extra

    def kill_switch(self) -> dict[str, Any] | None:
        return None

    def market_health(self) -> str:
        return "ok"

    def switchover(self, target: str | None) -> tuple[bool, str]:
        return False, "no"


@pytest.fixture
def client(database_url: str, cluster: str) -> Iterator[TestClient]:
    pool = make_pool(database_url, SessionLimits(2000, "test-plans-http"), name="t", max_size=2)
    pool.open(wait=True, timeout=10)
    replica = Replica(pool, Coord(ElectionConfig.for_lease(cluster, "r1", 3000)))
    with TestClient(build_app(replica)) as c:  # type: ignore[arg-type]
        yield c
    pool.close()


def test_create_show_list_cancel(client: TestClient, database_url: str, cluster: str) -> None:
    assert client.post("/plans", json=PLAN).status_code == 401
    made = client.post("/plans", json=PLAN, headers=AUTH)
    assert made.status_code == 201 and made.json() == {
        "plan_id": "dxy-btc-1",
        "revision": 1,
        "status": "pending",
        "duplicate": False,
    }
    again = client.post("/plans", json=PLAN, headers=AUTH)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = client.post("/plans", json={**PLAN, "price": "64600"}, headers=AUTH)
    assert other.status_code == 409
    assigned = client.post("/plans", json={k: v for k, v in PLAN.items() if k != "plan_id"}, headers=AUTH)
    assert assigned.status_code == 201 and assigned.json()["plan_id"].startswith("p-")
    shown = client.get("/plans/dxy-btc-1").json()
    assert shown["status"] == "pending" and shown["plan"]["conditions"]["all"][0]["window"] == "1h"
    assert client.get("/plans/nope").status_code == 404
    listed = client.get("/plans?status=pending").json()["plans"]
    assert {p["plan_id"] for p in listed} == {"dxy-btc-1", assigned.json()["plan_id"]}
    assert client.get("/plans?limit=0").status_code == 400 and client.get("/plans?status=x").status_code == 400
    assert client.delete("/plans/dxy-btc-1").status_code == 401
    gone = client.delete("/plans/dxy-btc-1", headers=AUTH)
    assert gone.status_code == 200 and gone.json()["status"] == "cancelled"
    assert client.delete("/plans/dxy-btc-1", headers=AUTH).status_code == 200  # idempotent
    assert client.delete("/plans/nope", headers=AUTH).status_code == 404


def test_an_edit_bumps_the_revision_by_compare_and_set(client: TestClient) -> None:
    assert client.post("/plans", json=PLAN, headers=AUTH).status_code == 201
    edited = {**PLAN, "price": "64600", "revision": 1}
    assert client.put("/plans/dxy-btc-1", json=edited).status_code == 401
    done = client.put("/plans/dxy-btc-1", json=edited, headers=AUTH)
    assert done.status_code == 200 and done.json() == {"plan_id": "dxy-btc-1", "revision": 2, "status": "pending"}
    shown = client.get("/plans/dxy-btc-1").json()
    assert shown["revision"] == 2 and shown["plan"]["price"] == "64600"
    # An editor who read revision 1 loses to the edit before it; nothing changes.
    stale = client.put("/plans/dxy-btc-1", json={**PLAN, "price": "64700", "revision": 1}, headers=AUTH)
    assert stale.status_code == 409 and stale.json()["plan"]["revision"] == 2
    bad = client.put("/plans/dxy-btc-1", json={**PLAN, "plan_id": "other", "side": "up"}, headers=AUTH)
    assert bad.status_code == 422 and {"revision", "plan_id", "side"} <= set(bad.json()["errors"])
    assert client.put("/plans/nope", json={**PLAN, "plan_id": "nope", "revision": 1}, headers=AUTH).status_code == 404
    assert client.delete("/plans/dxy-btc-1", headers=AUTH).status_code == 200
    late = client.put("/plans/dxy-btc-1", json={**PLAN, "revision": 2}, headers=AUTH)
    assert late.status_code == 409 and late.json()["plan"]["status"] == "cancelled"


def test_validation_and_a_cancel_that_loses(client: TestClient, database_url: str, cluster: str) -> None:
    bad = client.post(
        "/plans",
        json={**PLAN, "sl": "65000", "conditions": {"all": [{"type": "price_above", "symbol": "X", "lvl": 1}]}},
        headers=AUTH,
    )
    assert bad.status_code == 422
    assert set(bad.json()["errors"]) == {"sl", "conditions.all[0].lvl", "conditions.all[0].level"}
    past = client.post("/plans", json={**PLAN, "expires_at": "2020-01-01T00:00:00Z"}, headers=AUTH)
    assert past.status_code == 422 and "expires_at" in past.json()["errors"]
    dup = client.post(
        "/plans", content=b'{"plan_id": "a", "plan_id": "b"}', headers={**AUTH, "content-type": "application/json"}
    )
    assert dup.status_code == 422
    assert client.post("/plans", content=b"{", headers=AUTH).status_code == 400
    # executed first, then cancelled: 409 with the order
    assert client.post("/plans", json=PLAN, headers=AUTH).status_code == 201
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        set_leader(conn, cluster, 2)
        with StaticFencing(cluster, 2).fenced(conn) as (cur, fence):
            fp = store.execute(conn, cur, cluster, "l", 2, "dxy-btc-1", 1, parse_plan(PLAN)[1], {"result": "true"})
    late = client.delete("/plans/dxy-btc-1", headers=AUTH)
    assert late.status_code == 409
    assert late.json()["order"] == {"fingerprint": fp, "status": "received", "broker_ref": None}


def test_cli(
    tmp_path: Path, database_url: str, cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HAEXEC_DATABASE_URL", database_url)
    monkeypatch.setenv("HAEXEC_CLUSTER", cluster)

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN))
    code, out, err = run("plan", "create", str(path), "--json")
    assert code == 0 and json.loads(out)["plan_id"] == "dxy-btc-1", err
    code, out, err = run("plan", "create", "-", stdin=json.dumps({**PLAN, "side": "up"}))
    assert code == 2 and err.count("\n") == 1 and "side: must be" in err
    code, out, _ = run("plan", "explain", "dxy-btc-1")
    assert code == 0 and "not evaluated yet" in out
    news = tmp_path / "news.csv"
    news.write_text("time,currency,impact,title\n2026-12-04T13:30:00Z,USD,High,Non-Farm Payrolls\n")
    code, out, err = run("news", "import", str(news), "--json")
    assert code == 0 and json.loads(out)["new"] == 1, err
    news.write_text("time,currency,impact,title\n2026-12-04T13:30:00,USD,High,NFP\n")
    code, _, err = run("news", "import", str(news))
    assert code == 2 and "line 2" in err and "no offset" in err
    code, out, _ = run("plan", "cancel", "dxy-btc-1")
    assert code == 0 and "cancelled" in out
    code, _, err = run("plan", "show", "nope")
    assert code == 1 and "no plan" in err and "Traceback" not in err
