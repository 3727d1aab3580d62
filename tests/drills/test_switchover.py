"""Graceful switchover on real replicas: to a named target, to whoever is first, and refusals."""

from __future__ import annotations

import json
import urllib.request

from tests.support import (
    ReplicaProcess,
    Spawn,
    cluster_env,
    epoch_of,
    history,
    run_cli,
    the_leader,
    wait_for,
    wait_ready,
)


def post(r: ReplicaProcess, path: str, body: dict) -> int:
    req = urllib.request.Request(r.base + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_switchover_to_a_target_and_to_anyone(spawn: Spawn, cluster: str, redis_url: str, database_url: str) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)
    epoch = epoch_of(leader)
    target = next(r for r in replicas if r is not leader)
    wait_for(lambda: len(json.loads(run_cli(["status", "--json"], env).stdout)["replicas"]) == 3, 10, "registry")

    follower = next(r for r in replicas if r not in (leader, target))
    assert post(follower, "/coordinator/switchover", {}) == 409  # not the leader
    assert post(leader, "/coordinator/switchover", {"to": "nobody"}) == 409
    assert post(leader, "/coordinator/switchover", {"to": leader.instance_id}) == 409
    refused = run_cli(["switchover", "--to", "nobody"], env)
    assert refused.returncode == 1 and "unknown replica" in refused.stderr

    done = run_cli(["switchover", "--to", target.instance_id, "--json", "--reason", "patching"], env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["leader"] == {"instance_id": target.instance_id, "epoch": epoch + 1}
    assert the_leader(replicas) is target
    assert (leader.instance_id, epoch, "released:switchover") in history(database_url, cluster)

    again = run_cli(["switchover", "--json"], env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["leader"]["epoch"] == epoch + 2
    assert the_leader(replicas) is not target

    status, body = target.get("/coordinator/history?limit=3")
    assert status == 200 and [h["reason"] for h in body["history"]][:2] == ["acquired", "released:switchover"]
    assert target.get("/coordinator/history?limit=0")[0] == 400
    hist = run_cli(["history", "--json", "--limit", "5"], env)
    assert hist.returncode == 0 and len(json.loads(hist.stdout)) == 5
    audited = json.loads(run_cli(["audit", "list", "--json"], env).stdout)
    assert [(e["action"], e["reason"], e["detail"]) for e in audited] == [
        ("switchover", None, {"from": target.instance_id, "to": None}),
        ("switchover", "patching", {"from": leader.instance_id, "to": target.instance_id}),
    ]
    assert audited[1]["actor"].startswith("cli:") and audited[1]["actor"].endswith(" via http:127.0.0.1")
