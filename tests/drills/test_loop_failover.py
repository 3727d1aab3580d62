"""A leader whose supervised loop fails releases leadership and a healthy replica takes over;
the failed one answers 503 naming the loop and never takes leadership back. The fault is the
test-only HAEXEC_TEST_LOOP_FAULT: the executor crashes at every heartbeat while leading."""

from __future__ import annotations

from typing import Any

from tests.support import Spawn, cluster_env, epoch_of, history, the_leader, wait_for, wait_ready


def test_a_leader_with_a_failed_loop_hands_over_and_stays_out(
    spawn: Spawn, cluster: str, redis_url: str, database_url: str
) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    faulty = spawn({**env, "HAEXEC_TEST_LOOP_FAULT": "executor"}, "faulty")
    wait_ready([faulty])

    def released() -> list[tuple[str, int, str]]:
        return [h for h in history(database_url, cluster) if h[2] == "released:loop_failed"]

    (who, failed_epoch, _), *_ = wait_for(released, 15, "the faulty leader releasing for its failed loop")
    assert who == "faulty"

    def failed_health() -> tuple[int, Any] | None:
        status, body = faulty.get("/health")
        return (status, body) if status == 503 and body["checks"]["loops"] != "ok" else None

    status, body = wait_for(failed_health, 5, "/health 503 naming the loop")
    assert body["checks"]["loops"].startswith("failed: executor (its thread died"), body
    assert body["loops"]["executor"]["state"] == "failed" and body["loops"]["executor"]["restarts"] == 3
    assert faulty.get("/leader")[0] == 503

    healthy = spawn(env, "healthy")
    wait_ready([healthy])
    assert the_leader([faulty, healthy]) is healthy
    assert epoch_of(healthy) > failed_epoch
    acquired = [h for h in history(database_url, cluster) if h[0] == "faulty" and h[2] == "acquired"]
    assert len(acquired) == 1, history(database_url, cluster)  # never took it back
    assert "loop executor failed" in faulty.log()
