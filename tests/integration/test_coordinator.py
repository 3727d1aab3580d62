"""Coordinators in this process against real Redis and real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from common.clock import FakeClock
from coordinator import service
from coordinator.config import ElectionConfig
from coordinator.fencing import EpochSuperseded, NotLeader, fenced
from coordinator.service import Coordinator
from db.urls import libpq_url
from tests.support import history, wait_for


def make(cluster: str, name: str, redis_url: str, database_url: str, lease_ms: int = 1500) -> Coordinator:
    cfg = ElectionConfig.for_lease(cluster, name, lease_ms)
    c = Coordinator(cfg, redis_url, database_url)
    c.open(timeout_s=10)
    c.start()
    return c


@pytest.fixture
def trio(cluster: str, redis_url: str, database_url: str) -> Iterator[list[Coordinator]]:
    coords = [make(cluster, f"r{i}", redis_url, database_url) for i in range(3)]
    yield coords
    for c in coords:
        c.stop()


def leaders(coords: list[Coordinator]) -> list[Coordinator]:
    return [c for c in coords if c.elector.is_leader()]


def test_exactly_one_leader_and_its_epoch_fences_writes(trio: list[Coordinator], database_url: str) -> None:
    leader = wait_for(lambda: leaders(trio) if len(leaders(trio)) == 1 else None, 10, "one leader")[0]
    fence = leader.fence()
    followers = [c for c in trio if c is not leader]
    for f in followers:
        with pytest.raises(NotLeader):
            f.fence()
    with psycopg.connect(libpq_url(database_url)) as conn:
        with leader.fenced(conn) as (cur, used):
            assert used.epoch == fence.epoch
            cur.execute("SELECT 1")
        with pytest.raises(EpochSuperseded), fenced(conn, leader.cfg.cluster, fence.epoch - 1):
            pass


def test_release_hands_over_to_a_follower_with_a_higher_epoch(
    trio: list[Coordinator], database_url: str, cluster: str
) -> None:
    leader = wait_for(lambda: leaders(trio) if len(leaders(trio)) == 1 else None, 10, "one leader")[0]
    epoch = leader.fence().epoch
    started = time.monotonic()
    leader.stop("released:sigterm")
    rest = [c for c in trio if c is not leader]
    new = wait_for(lambda: leaders(rest), 5, "a new leader")[0]
    took = time.monotonic() - started
    assert new.fence().epoch == epoch + 1
    # Pub/sub wakes the followers: far faster than waiting out the lease.
    assert took < leader.cfg.lease_ms / 1000
    reasons = [r for _, _, r in history(database_url, cluster)]
    assert reasons[-3:] == ["acquired", "released:sigterm", "acquired"]


def test_lease_survives_a_stall_of_four_leases_elsewhere_in_the_process(
    cluster: str, redis_url: str, database_url: str
) -> None:
    leader = make(cluster, "solo", redis_url, database_url)
    # Four leases: a renewal starved by the stall would lose the lease within the first one.
    stall_s = 4 * leader.cfg.lease_ms / 1000
    try:
        wait_for(leader.elector.is_leader, 10, "leadership")
        epoch = leader.fence().epoch
        stop = time.monotonic() + stall_s

        def spin() -> None:  # pure-Python CPU work holding the GIL between switches
            x = 0
            while time.monotonic() < stop:
                x += 1

        def block() -> None:  # a blocking call (I/O, a hung broker)
            time.sleep(stall_s)

        workers = [threading.Thread(target=spin), threading.Thread(target=block)]
        for w in workers:
            w.start()
        lost = False
        while any(w.is_alive() for w in workers):
            lost = lost or not leader.elector.is_leader()
            time.sleep(0.05)
        assert not lost, "leadership dropped during the stall"
        assert leader.fence().epoch == epoch
        assert [r for _, _, r in history(database_url, cluster)] == ["acquired"]
    finally:
        leader.stop()


def test_the_cluster_view_is_served_from_memory_with_its_age(
    cluster: str, redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/coordinator/leader's view: read from both stores at most every VIEW_MAX_AGE_MS, so a
    poll storm during a takeover costs one read per interval, and each answer says how old it is."""
    clock = FakeClock()
    c = Coordinator(ElectionConfig.for_lease(cluster, "v", 1500), redis_url, database_url, clock=clock)
    c.open(timeout_s=10)
    reads = []
    real = service.read_view
    monkeypatch.setattr(service, "read_view", lambda *a, **k: reads.append(1) or real(*a, **k))
    try:
        first, age = c.view()
        assert age == 0 and len(reads) == 1
        clock.advance(service.VIEW_MAX_AGE_MS - 1)
        again, age = c.view()
        assert again is first and age == service.VIEW_MAX_AGE_MS - 1 and len(reads) == 1
        clock.advance(1)
        fresh, age = c.view()
        assert fresh is not first and age == 0 and len(reads) == 2
    finally:
        c.stop()


def test_a_venue_action_needs_a_lease_that_outlives_the_call(cluster: str, redis_url: str, database_url: str) -> None:
    c = make(cluster, "solo", redis_url, database_url)
    try:
        wait_for(c.elector.is_leader, 10, "leadership")
        fence = c.fence(min_remaining_ms=100)
        assert fence.epoch == c.elector.epoch and fence.remaining_ms >= 100
        with pytest.raises(NotLeader, match="ms left, 15000 ms needed"):
            c.fence(min_remaining_ms=10 * c.cfg.lease_ms)  # no renewal can give that much
    finally:
        c.stop()
