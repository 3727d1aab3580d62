"""The plan store on real PostgreSQL: create, cancel, edit, expiry and the fenced execution
that inserts the plan's signal through the signal path's own statement."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from coordinator.fencing import EpochSuperseded
from db.urls import libpq_url
from engine import store as signals
from engine.model import SignalStatus
from engine.plans import store
from engine.plans.model import Plan, parse_plan
from tests.plans_support import StaticFencing, set_leader

ORDER = {"symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01", "price": "1.1", "sl": "1.09"}


@pytest.fixture
def conn(database_url: str, cluster: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as c:
        set_leader(c, cluster, 3)
        yield c


def plan(**extra: Any) -> Plan:
    return parse_plan({**ORDER, **extra})[1]


def execute(conn: psycopg.Connection, cluster: str, pid: str, rev: int, p: Plan, epoch: int = 3) -> str | None:
    with StaticFencing(cluster, epoch).fenced(conn) as (cur, fence):
        return store.execute(conn, cur, cluster, "leader", fence.epoch, pid, rev, p, {"result": "true"})


def status(conn: psycopg.Connection, cluster: str, pid: str) -> str:
    row = store.show(conn, cluster, pid)
    assert row is not None
    return str(row["status"])


def test_create_is_idempotent_per_plan_id(conn: psycopg.Connection, cluster: str) -> None:
    made = store.create(conn, cluster, "r1", None, plan())
    assert made.outcome is store.Created.CREATED and made.plan_id.startswith("p-") and made.revision == 1
    again = store.create(conn, cluster, "r2", "mine", plan())
    assert again.outcome is store.Created.CREATED
    assert store.create(conn, cluster, "r2", "mine", plan()).outcome is store.Created.SAME
    assert store.create(conn, cluster, "r2", "mine", plan(volume="0.02")).outcome is store.Created.CONFLICT
    assert {p["plan_id"] for p in store.list_plans(conn, cluster, "pending", 10)} == {made.plan_id, "mine"}


def test_execute_inserts_the_signal_once_and_a_late_cancel_is_refused(conn: psycopg.Connection, cluster: str) -> None:
    p = plan(expires_at="2099-01-01T00:00:00Z")
    store.create(conn, cluster, "r1", "a", p)
    fp = execute(conn, cluster, "a", 1, p)
    assert fp is not None
    row = conn.execute(
        "SELECT source, signal_id, status, payload->>'expires_at' FROM signals WHERE cluster = %s AND fingerprint = %s",
        (cluster, fp),
    ).fetchone()
    assert row == ("plan", "a:1", "received", "2099-01-01T00:00:00.000000Z")
    assert execute(conn, cluster, "a", 1, p) is None  # the CAS: never twice
    outcome, current = store.cancel(conn, cluster, "a", "user")
    assert outcome is store.Cancelled.TOO_LATE and current is not None
    assert current["status"] == "executing" and current["signal_fingerprint"] == fp
    assert current["signal_status"] == "received"
    # the signal settles -> the plan follows (the trigger)
    sid = conn.execute("SELECT id FROM signals WHERE cluster = %s AND fingerprint = %s", (cluster, fp)).fetchone()
    assert sid is not None
    with conn.transaction():
        conn.execute("UPDATE signals SET status = 'executing', epoch = 3 WHERE id = %s", (sid[0],))
        with conn.cursor() as cur:
            signals.record_outcomes(cur, 3, "leader", [signals.Settlement(sid[0], SignalStatus.EXECUTED, "done", "T1")])
    assert status(conn, cluster, "a") == "executed"


def test_a_rejected_signal_fails_its_plan(conn: psycopg.Connection, cluster: str) -> None:
    store.create(conn, cluster, "r1", "r", plan())
    fp = execute(conn, cluster, "r", 1, plan())
    conn.execute(
        "UPDATE signals SET status = 'rejected', error = 'risk: max_volume' WHERE cluster = %s AND fingerprint = %s",
        (cluster, fp),
    )
    shown = store.show(conn, cluster, "r")
    assert shown is not None and (shown["status"], shown["detail"]) == ("failed", "rejected: risk: max_volume")


def test_cancel_then_execute_does_nothing(conn: psycopg.Connection, cluster: str) -> None:
    store.create(conn, cluster, "r1", "c", plan())
    assert store.cancel(conn, cluster, "c", "user")[0] is store.Cancelled.CANCELLED
    assert execute(conn, cluster, "c", 1, plan()) is None
    assert store.cancel(conn, cluster, "c", "user")[0] is store.Cancelled.TOO_LATE
    assert store.cancel(conn, cluster, "nope", "user") == (store.Cancelled.NOT_FOUND, None)
    assert conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (cluster,)).fetchone() == (0,)


def test_edit_bumps_the_revision_and_the_old_one_never_executes(conn: psycopg.Connection, cluster: str) -> None:
    store.create(conn, cluster, "r1", "e", plan())
    assert store.edit(conn, cluster, "e", 1, plan(volume="0.02")) == 2
    assert store.edit(conn, cluster, "e", 1, plan(volume="0.03")) is None  # stale editor
    assert execute(conn, cluster, "e", 1, plan()) is None
    fp = execute(conn, cluster, "e", 2, plan(volume="0.02"))
    payload = conn.execute("SELECT signal_id, payload->>'volume' FROM signals WHERE fingerprint = %s", (fp,)).fetchone()
    assert payload == ("e:2", "0.02")
    assert store.edit(conn, cluster, "e", 2, plan()) is None  # not pending any more


def test_expiry(conn: psycopg.Connection, cluster: str) -> None:
    store.create(conn, cluster, "r1", "x", plan(expires_at="2099-01-01T00:00:00Z"))
    store.create(conn, cluster, "r1", "y", plan())
    conn.execute(
        "UPDATE trade_plans SET expires_at = now() - interval '1 s' WHERE cluster = %s AND plan_id = 'x'", (cluster,)
    )
    assert execute(conn, cluster, "x", 1, plan()) is None  # past due: the CAS refuses it
    assert [p.plan_id for p in store.pending(conn, cluster)] == ["y"]
    with StaticFencing(cluster, 3).fenced(conn) as (cur, _):
        assert store.expire_due(cur, cluster) == ["x"]
    assert status(conn, cluster, "x") == "expired"


def test_a_superseded_epoch_writes_nothing(conn: psycopg.Connection, cluster: str) -> None:
    store.create(conn, cluster, "r1", "f", plan())
    set_leader(conn, cluster, 4, "other")
    with pytest.raises(EpochSuperseded):
        execute(conn, cluster, "f", 1, plan(), epoch=3)
    assert status(conn, cluster, "f") == "pending"
    assert execute(conn, cluster, "f", 1, plan(), epoch=4) is not None


def test_patterns_once_and_retention(conn: psycopg.Connection, cluster: str) -> None:
    from engine.market.base import Timeframe
    from engine.plans.conditions.base import Pattern

    pats = [Pattern("EURUSD", Timeframe.M5, "bos_up", 1_767_225_600_000, 1_767_225_900_000, {"level": "1.1"})]
    with StaticFencing(cluster, 3).fenced(conn) as (cur, _):
        assert store.record_patterns(cur, cluster, pats) == 1
        assert store.record_patterns(cur, cluster, pats * 2) == 0
    assert store.count_patterns(conn, cluster) == (1, 0)
    with StaticFencing(cluster, 3).fenced(conn) as (cur, _):
        assert store.cleanup_patterns(cur, cluster, 3600) == 0
        assert store.cleanup_patterns(cur, cluster, 0) == 1
