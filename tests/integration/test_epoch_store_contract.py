"""One contract, two epoch stores: the PostgreSQL `EpochStore` and the in-memory copy the
elector's unit tests run on (tests/unit/memory_store.py). The same scenarios run against
both, so the copy cannot drift from the SQL it transcribes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from common.clock import FakeClock
from coordinator.epoch import EpochStore
from db.session import SessionLimits, make_pool
from tests.unit.memory_store import MemoryEpochStore

STALE_MS = 150
HANDOFF_MS = 60_000  # a named successor's window: longer than any test, so it never lapses here


@dataclass
class Store:
    store: Any
    wait_ms: Callable[[float], None]  # let this much of the store's own time pass


@pytest.fixture(scope="module")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = make_pool(database_url, SessionLimits(2000, "test-epoch-contract"), name="test-epoch-contract", max_size=2)
    p.open(wait=True, timeout=10)
    yield p
    p.close()


@pytest.fixture(params=["postgresql", "memory"])
def epochs(request: pytest.FixtureRequest, cluster: str) -> Store:
    if request.param == "memory":
        clock = FakeClock()
        return Store(MemoryEpochStore(cluster, clock, STALE_MS, HANDOFF_MS), lambda ms: clock.advance(ms))
    pg = EpochStore(request.getfixturevalue("pool"), cluster, STALE_MS, HANDOFF_MS)

    def wait(ms: float) -> None:  # the database's clock moves on its own: wait until it has
        deadline = time.monotonic() + ms / 1000.0
        while time.monotonic() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    return Store(pg, wait)


def test_a_fresh_record_is_free_and_claims_are_compare_and_set(epochs: Store) -> None:
    s = epochs.store
    r = s.read()
    assert (r.epoch, r.instance_id, r.released) == (0, None, False)
    assert s.claim(0, "a") == 1
    assert s.claim(0, "b") is None  # the epoch moved on
    assert s.claim(1, "b") is None  # held, and heartbeating
    r = s.read()
    assert (r.epoch, r.instance_id, r.released) == (1, "a", False)
    assert r.held(STALE_MS) and not r.free_for("b", STALE_MS, HANDOFF_MS)


def test_only_the_holder_heartbeats_and_only_while_it_holds(epochs: Store) -> None:
    s = epochs.store
    assert s.claim(0, "a") == 1
    assert s.heartbeat(1, "a") is True
    assert s.heartbeat(1, "b") is False
    assert s.heartbeat(2, "a") is False
    assert s.release(1, "a", "released:sigterm") is True
    assert s.heartbeat(1, "a") is False  # a released record takes no heartbeat


def test_a_stale_holder_can_be_replaced(epochs: Store) -> None:
    s = epochs.store
    assert s.claim(0, "a") == 1
    epochs.wait_ms(STALE_MS + 50)
    r = s.read()
    assert r.stale(STALE_MS) and r.free_for("b", STALE_MS, HANDOFF_MS)
    assert s.claim(1, "b") == 2
    assert s.heartbeat(1, "a") is False  # the deposed holder learns it at its next heartbeat


def test_a_release_with_a_successor_is_that_successors_alone(epochs: Store) -> None:
    s = epochs.store
    assert s.claim(0, "a") == 1
    assert s.release(1, "a", "released:switchover", handoff_to="b") is True
    r = s.read()
    assert (r.released, r.handoff_to) == (True, "b")
    assert not r.free_for("c", STALE_MS, HANDOFF_MS) and r.free_for("b", STALE_MS, HANDOFF_MS)
    assert s.claim(1, "c") is None
    assert s.claim(1, "b") == 2
    assert s.read().released is False


def test_release_by_a_non_holder_changes_nothing_but_is_recorded(epochs: Store) -> None:
    s = epochs.store
    assert s.claim(0, "a") == 1
    assert s.release(1, "b", "released:sigterm") is False
    assert s.release(0, "a", "released:sigterm") is False
    assert s.read().instance_id == "a" and s.read().released is False
    s.record(1, "a", "lost:lease_expired")
    got = [(h.instance_id, h.epoch, h.event, h.reason) for h in s.history(10)]
    assert got == [
        ("a", 1, "lost", "lost:lease_expired"),
        ("a", 0, "released", "released:sigterm"),
        ("b", 1, "released", "released:sigterm"),
        ("a", 1, "acquired", "acquired"),
    ]
    assert [h.reason for h in s.history(2)] == ["lost:lease_expired", "released:sigterm"]
