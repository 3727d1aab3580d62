"""Exactly once, never after cancel: random interleavings of trigger (by the current and by
a deposed leader), cancel, expiry, edit and failover against real PostgreSQL; then a real
race of a cancel and two leaders' executions on threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.fencing import EpochSuperseded
from db.urls import libpq_url
from engine.plans import store
from engine.plans.model import Plan, parse_plan
from tests.plans_support import StaticFencing, set_leader

ORDER = {"symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01", "price": "1.1", "sl": "1.09"}
PLANS = ("a", "b")
OPS = st.lists(
    st.tuples(
        st.sampled_from(["trigger", "stale_trigger", "cancel", "expire", "edit", "edit_unseen", "failover"]),
        st.sampled_from(PLANS),
    ),
    min_size=1,
    max_size=12,
)


def plan(volume: str = "0.01") -> Plan:
    return parse_plan({**ORDER, "volume": volume})[1]


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as c:
        yield c


def try_execute(conn: psycopg.Connection, cluster: str, epoch: int, pid: str, revision: int) -> bool:
    try:
        with StaticFencing(cluster, epoch).fenced(conn) as (cur, fence):
            return store.execute(conn, cur, cluster, "l", fence.epoch, pid, revision, plan(), {}) is not None
    except EpochSuperseded:
        return False


def store_revision(conn: psycopg.Connection, cluster: str, pid: str) -> int:
    row = store.show(conn, cluster, pid)
    assert row is not None
    return int(row["revision"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_interleavings(conn: psycopg.Connection, ops: list[tuple[str, str]]) -> None:
    cluster = f"h{uuid.uuid4().hex[:12]}"
    epoch = 1
    set_leader(conn, cluster, epoch)
    seen_rev = {pid: 1 for pid in PLANS}  # what each leader's evaluation last read
    for pid in PLANS:
        store.create(conn, cluster, "r", pid, plan())
    closed_at: dict[str, int] = {}  # plan -> how many of its signals existed when it was cancelled/expired
    for op, pid in ops:
        if op == "trigger":
            try_execute(conn, cluster, epoch, pid, seen_rev[pid])
        elif op == "stale_trigger":  # a deposed leader that woke up with an old evaluation
            assert not try_execute(conn, cluster, epoch - 1, pid, seen_rev[pid]) or epoch == 1
        elif op == "cancel":
            if store.cancel(conn, cluster, pid, "u")[0] is store.Cancelled.CANCELLED:
                closed_at[pid] = 0
        elif op == "expire":
            conn.execute(
                "UPDATE trade_plans SET expires_at = now() WHERE cluster = %s AND plan_id = %s AND status = 'pending'",
                (cluster, pid),
            )
            with StaticFencing(cluster, epoch).fenced(conn) as (cur, _):
                for gone in store.expire_due(cur, cluster):
                    closed_at[gone] = 0
        elif op in ("edit", "edit_unseen"):
            # edit_unseen: the leader's next trigger still names the revision it evaluated
            new = store.edit(conn, cluster, pid, store_revision(conn, cluster, pid), plan("0.02"))
            if new is not None and op == "edit":
                seen_rev[pid] = new
        elif op == "failover":
            epoch += 1
            set_leader(conn, cluster, epoch, f"l{epoch}")
    rows = conn.execute(
        "SELECT p.plan_id, p.status, count(s.id) FROM trade_plans p LEFT JOIN signals s ON s.cluster = p.cluster"
        " AND s.source = 'plan' AND split_part(s.signal_id, ':', 1) = p.plan_id WHERE p.cluster = %s"
        " GROUP BY p.plan_id, p.status",
        (cluster,),
    ).fetchall()
    for pid, status, n in rows:
        assert n <= 1, f"{pid} executed {n} times"
        if status in ("cancelled", "expired"):
            assert n == 0 and pid in closed_at, f"{pid} {status} with {n} signals"
        if status == "executing":
            assert n == 1
        if n:  # the signal carries the revision the CAS matched, never an edited-away one
            sig = conn.execute(
                "SELECT signal_id FROM signals WHERE cluster = %s AND split_part(signal_id, ':', 1) = %s",
                (cluster, pid),
            ).fetchone()
            assert sig is not None and int(sig[0].split(":")[1]) <= store_revision(conn, cluster, pid)


def race(dsn: str, cluster: str, failover: bool) -> dict[str, object]:
    """A cancel, the old leader's execution and the new one's (after a failover, or the same
    leader twice), released together on threads of their own connections."""
    gate = threading.Barrier(3)
    results: dict[str, object] = {}

    def old(c: psycopg.Connection) -> bool:
        return try_execute(c, cluster, 1, "p", 1)

    def new(c: psycopg.Connection) -> bool:
        if failover:
            set_leader(c, cluster, 2, "l2")
        return try_execute(c, cluster, 2 if failover else 1, "p", 1)

    def cancel(c: psycopg.Connection) -> store.Cancelled:
        return store.cancel(c, cluster, "p", "u")[0]

    def run(name: str, action: Callable[[psycopg.Connection], object]) -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            gate.wait()
            results[name] = action(own)

    threads = [threading.Thread(target=run, args=(n, a)) for n, a in (("old", old), ("new", new), ("cancel", cancel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_a_cancel_racing_two_leaders(conn: psycopg.Connection) -> None:
    """Whoever wins, the plan has at most one signal, and none if the cancel won."""
    for round_ in range(15):
        cluster = f"r{uuid.uuid4().hex[:12]}"
        set_leader(conn, cluster, 1)
        store.create(conn, cluster, "r", "p", plan())
        results = race(conn.info.dsn, cluster, failover=bool(round_ % 2))
        n = conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (cluster,)).fetchone()
        assert n is not None and n[0] == int(bool(results["old"])) + int(bool(results["new"])) <= 1
        if results["cancel"] is store.Cancelled.CANCELLED:
            assert n[0] == 0
