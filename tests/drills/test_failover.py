"""Three real replica processes on real Redis and PostgreSQL: kill, pause, fence."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psycopg
import pytest

from coordinator.fencing import EpochSuperseded, fenced
from db.urls import libpq_url
from tests.support import (
    LEASE_MS,
    ReplicaProcess,
    Spawn,
    cluster_env,
    epoch_of,
    epochs_held,
    history,
    the_leader,
    wait_for,
    wait_ready,
)


@pytest.fixture
def trio(spawn: Spawn, cluster: str, redis_url: str, database_url: str) -> list[ReplicaProcess]:
    env = cluster_env(cluster, redis_url, database_url)
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    return replicas


def assert_one_holder_per_epoch(database_url: str, cluster: str) -> None:
    held = epochs_held(database_url, cluster)
    assert all(len(v) == 1 for v in held.values()), held
    assert sorted(held) == list(range(1, len(held) + 1)), f"epochs not contiguous: {sorted(held)}"


def test_sigkill_of_the_leader_elects_another_with_a_higher_epoch(
    trio: list[ReplicaProcess], database_url: str, cluster: str
) -> None:
    leader = the_leader(trio)
    epoch = epoch_of(leader)
    leader.signal(signal.SIGKILL)
    leader.proc.wait()
    rest = [r for r in trio if r is not leader]
    new = the_leader(rest, timeout_s=LEASE_MS / 1000 * 4)
    assert epoch_of(new) > epoch
    assert_one_holder_per_epoch(database_url, cluster)


def test_paused_leader_is_replaced_and_demotes_itself_on_waking(
    trio: list[ReplicaProcess], database_url: str, cluster: str
) -> None:
    old = the_leader(trio)
    old_epoch = epoch_of(old)
    old.signal(signal.SIGSTOP)
    rest = [r for r in trio if r is not old]
    new = the_leader(rest, timeout_s=LEASE_MS / 1000 * 4)
    new_epoch = epoch_of(new)
    assert new_epoch == old_epoch + 1
    old.signal(signal.SIGCONT)
    # On waking its lease is already untrusted: /leader answers 503 from the first request.
    wait_for(lambda: old.get("/leader")[0] == 503, 5, "the woken ex-leader answering 503")
    wait_for(
        lambda: (old.instance_id, old_epoch, "lost:lease_expired") in history(database_url, cluster),
        5,
        "the ex-leader's lost:lease_expired row",
    )
    # Any write fenced by the old epoch is refused by the database.
    with psycopg.connect(libpq_url(database_url)) as conn:
        with pytest.raises(EpochSuperseded), fenced(conn, cluster, old_epoch):
            pass
    assert the_leader(trio) is new
    assert epoch_of(new) == new_epoch
    assert_one_holder_per_epoch(database_url, cluster)


CLAIM_HOLDER = """
import os, signal, sys, psycopg
from coordinator.fencing import fenced
from db.session import SessionLimits, connect
url, cluster, epoch, timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = connect(url, SessionLimits(timeout_ms))
with fenced(conn, cluster, epoch):
    print("in-claim", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # paused inside the claim transaction
"""


def test_a_leader_paused_inside_a_claim_transaction_cannot_block_the_takeover(
    trio: list[ReplicaProcess], database_url: str, cluster: str
) -> None:
    leader = the_leader(trio)
    epoch = epoch_of(leader)
    # The same session limits a replica uses (lease 1500 -> 500 ms), holding FOR KEY SHARE.
    holder = subprocess.Popen(
        [sys.executable, "-c", CLAIM_HOLDER, database_url, cluster, str(epoch), str(LEASE_MS // 3)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "in-claim"
        wait_for(lambda: open(f"/proc/{holder.pid}/stat").read().split()[2] == "T", 5, "holder stopped")
        leader.signal(signal.SIGSTOP)
        rest = [r for r in trio if r is not leader]
        new = the_leader(rest, timeout_s=LEASE_MS / 1000 * 4)
        assert epoch_of(new) == epoch + 1
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()
        leader.signal(signal.SIGCONT)


def test_idle_cluster_keeps_one_leader_without_changes(
    trio: list[ReplicaProcess], database_url: str, cluster: str
) -> None:
    leader = the_leader(trio)
    epoch = epoch_of(leader)
    deadline = time.monotonic() + 3 * LEASE_MS / 1000
    while time.monotonic() < deadline:
        assert [r for r in trio if r.is_leader()] == [leader]
        time.sleep(0.1)
    assert epoch_of(leader) == epoch
    assert [h[2] for h in history(database_url, cluster)] == ["acquired"]
