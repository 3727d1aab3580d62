"""Redis behind Sentinel: three replicas on `redis+sentinel://`, a forced failover of the Redis
master, and what the lease does across it. Test-owned processes only: one master, one
replica, three sentinels, each on a free port in this test's own directory."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from embedded import redis_server_binary
from tests.support import (
    LEASE_MS,
    ReplicaProcess,
    Spawn,
    cluster_env,
    epoch_of,
    epochs_held,
    free_port,
    history,
    run_cli,
    the_leader,
    wait_for,
    wait_ready,
)

MASTER_NAME = "mymaster"
HOST = "127.0.0.1"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _client(port: int, timeout_s: float = 1.0) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def _answers(port: int) -> bool:
    try:
        with _client(port, 0.5) as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


@dataclass
class SentinelTopology:
    """One master (min-replicas-to-write 1), one replica, three sentinels (quorum 2)."""

    workdir: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(f'{HOST}:{p}' for p in self.sentinel_ports)}/{MASTER_NAME}"

    def _spawn(self, name: str, lines: list[str], sentinel: bool = False) -> None:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        conf = d / ("sentinel.conf" if sentinel else "redis.conf")
        common = [f"bind {HOST}", "protected-mode yes", "daemonize no", f'dir "{d}"', f'logfile "{d}/server.log"']
        conf.write_text("\n".join([*common, *lines, ""]))
        args = [str(redis_server_binary()), str(conf)] + (["--sentinel"] if sentinel else [])
        self.procs[name] = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=d,
            start_new_session=True,
        )

    def start(self) -> None:
        data = ['save ""', "appendonly no"]
        self._spawn(
            "master",
            [f"port {self.master_port}", *data, "min-replicas-to-write 1", "min-replicas-max-lag 1"],
        )
        self._spawn("replica", [f"port {self.replica_port}", *data, f"replicaof {HOST} {self.master_port}"])
        wait_for(lambda: _answers(self.master_port) and _answers(self.replica_port), 15, "master and replica up")
        wait_for(self._replication_up, 15, "replica in sync with the master")
        for i, port in enumerate(self.sentinel_ports, start=1):
            self._spawn(
                f"sentinel{i}",
                [
                    f"port {port}",
                    f"sentinel monitor {MASTER_NAME} {HOST} {self.master_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                ],
                sentinel=True,
            )
        wait_for(self._sentinels_agree, 30, "three sentinels that know the master, its replica and each other")

    def _replication_up(self) -> bool:
        try:
            with _client(self.replica_port) as r, _client(self.master_port) as m:
                link = r.info("replication").get("master_link_status") == "up"
                return link and int(m.info("replication").get("connected_slaves", 0)) == 1
        except redis.RedisError:
            return False

    def sentinel(self, i: int = 0) -> redis.Redis:
        return _client(self.sentinel_ports[i])

    def _sentinels_agree(self) -> bool:
        try:
            for port in self.sentinel_ports:
                with _client(port) as s:
                    state = s.sentinel_master(MASTER_NAME)
                    if int(state["port"]) != self.master_port or "s_down" in state.get("flags", ""):
                        return False
                    if int(state["num-slaves"]) != 1 or int(state["num-other-sentinels"]) != 2:
                        return False
        except (redis.RedisError, KeyError):
            return False
        return True

    def masters_seen(self) -> list[int | None]:
        """The master's port according to each sentinel (None: no answer)."""
        seen: list[int | None] = []
        for port in self.sentinel_ports:
            try:
                with _client(port, 0.5) as s:
                    addr = s.sentinel_get_master_addr_by_name(MASTER_NAME)
                seen.append(int(addr[1]) if addr else None)
            except redis.RedisError:
                seen.append(None)
        return seen

    def role(self, port: int) -> str | None:
        try:
            with _client(port, 0.5) as c:
                return str(c.info("replication").get("role"))
        except redis.RedisError:
            return None

    def logs(self) -> str:
        out = []
        for name in self.procs:
            path = self.workdir / name / "server.log"
            if path.exists():
                out.append(f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    topo = SentinelTopology(tmp_path / "sentinel-topology")
    try:
        topo.start()
        yield topo
    finally:
        topo.stop()


def _acquired(database_url: str, cluster: str) -> list[tuple[str, int]]:
    return [(i, e) for i, e, reason in history(database_url, cluster) if reason == "acquired"]


@dataclass
class Failover:
    """What the new master saw of the lease key during the failover; times in seconds from the
    SENTINEL FAILOVER command."""

    promoted_s: float | None = None  # the old replica answers role:master
    sentinels_agree_s: float | None = None  # every sentinel names it
    key_at_promotion: str | None = None
    pttl_at_promotion: int | None = None
    first_write_s: float | None = None  # the key's TTL went back up on the new master
    key_after_first_write: str | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)

    def renew_deadline_s(self, lease_ms: int, renew_deadline_ms: int) -> float | None:
        """When the leader's renew deadline ran out, estimated from the key's TTL at promotion
        (the replica keeps the absolute expiry of the last renewal that reached the old master)."""
        if self.promoted_s is None or self.pttl_at_promotion is None or self.pttl_at_promotion < 0:
            return None
        last_renew = self.promoted_s - (lease_ms - self.pttl_at_promotion) / 1000
        return last_renew + renew_deadline_ms / 1000

    def summary(self) -> str:
        holder = (self.key_at_promotion or "-").split("|")[0]
        after = (self.key_after_first_write or "-").split("|")[0]
        return (
            f"replica promoted +{self.promoted_s:.3f}s (key of {holder!r}, pttl {self.pttl_at_promotion} ms), "
            f"sentinels agree +{self.sentinels_agree_s:.3f}s, first write of the key on the new master "
            f"+{self.first_write_s if self.first_write_s is None else round(self.first_write_s, 3)}s (by {after!r})"
        )


def _after_a_renewal(port: int, key: str, timeout_s: float = 10) -> None:
    """Return right after the leader's renewal lands on the master at `port` (its TTL goes up)."""
    with _client(port) as c:
        last = int(c.pttl(key))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pttl = int(c.pttl(key))
            if pttl > last + 20:
                return
            last = pttl
            time.sleep(0.003)
    raise AssertionError(f"no renewal of {key} seen on port {port} within {timeout_s}s")


def _force_failover(topo: SentinelTopology, key: str, deadline_s: float) -> Failover:
    """SENTINEL FAILOVER, then follow the new master's copy of the key every few milliseconds
    until a write lands on it and every sentinel names it (or the deadline)."""
    seen = Failover()
    new_port = topo.replica_port
    with topo.sentinel(0) as s, _client(new_port, 0.5) as new:
        t0 = time.monotonic()
        assert s.execute_command("SENTINEL", "FAILOVER", MASTER_NAME) in (True, "OK", b"OK")
        last_pttl: int | None = None
        while time.monotonic() - t0 < deadline_s:
            now = time.monotonic() - t0
            try:
                if seen.promoted_s is None and new.info("replication").get("role") == "master":
                    seen.promoted_s = now
                    # At once: this TTL is all the leader has left to reach the new master.
                    seen.key_at_promotion = new.get(key)
                    seen.pttl_at_promotion = last_pttl = int(new.pttl(key))
                elif seen.promoted_s is not None and seen.first_write_s is None:
                    pttl = int(new.pttl(key))
                    seen.samples.append((round(now, 3), pttl))
                    if last_pttl is not None and pttl > max(last_pttl, 0) + 20:
                        seen.first_write_s = now
                        seen.key_after_first_write = new.get(key)
                    last_pttl = pttl
            except redis.RedisError:
                pass
            if seen.sentinels_agree_s is None and all(p == new_port for p in topo.masters_seen()):
                seen.sentinels_agree_s = time.monotonic() - t0
            if seen.first_write_s is not None and seen.sentinels_agree_s is not None:
                break
            time.sleep(0.005)
    return seen


@pytest.mark.parametrize(
    ("lease_ms", "right_after_a_renewal"),
    [
        # The drills' lease: its renew deadline (1000 ms) is shorter than the ~1.2 s Sentinel needs
        # to name the new master after a forced failover, so the leader usually has to let go.
        (LEASE_MS, False),
        # The default lease, failed over right after a renewal: 2000 ms of renew deadline left,
        # enough to find the new master, so the leader must keep its epoch.
        (3000, True),
    ],
    ids=["lease1500", "lease3000-after-renewal"],
)
def test_forced_sentinel_failover(
    topology: SentinelTopology,
    spawn: Spawn,
    cluster: str,
    database_url: str,
    lease_ms: int,
    right_after_a_renewal: bool,
) -> None:
    env = cluster_env(cluster, topology.url, database_url, lease_ms=lease_ms)
    renew_deadline_ms = lease_ms * 2 // 3
    replicas: list[ReplicaProcess] = [spawn(env, f"s{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)
    epoch = epoch_of(leader)
    key = f"haexec:{cluster}:leader"
    assert topology.masters_seen() == [topology.master_port] * 3
    with _client(topology.replica_port) as r:  # replication works: the replica has the key
        wait_for(lambda: (r.get(key) or "").startswith(f"{leader.instance_id}|"), 5, "the key on the replica")
    acquired_before = _acquired(database_url, cluster)

    if right_after_a_renewal:
        _after_a_renewal(topology.master_port, key)
    seen = _force_failover(topology, key, deadline_s=20)
    deadline = seen.renew_deadline_s(lease_ms, renew_deadline_ms)
    print(f"\nlease {lease_ms} ms: {seen.summary()}; leader's renew deadline +{deadline}s")
    assert seen.promoted_s is not None, f"the replica was never promoted\n{topology.logs()}"
    assert seen.sentinels_agree_s is not None, f"the sentinels never agreed on the new master\n{topology.logs()}"
    assert topology.role(topology.replica_port) == "master"
    assert seen.first_write_s is not None, f"no replica ever wrote the key on the new master: {seen.samples}"

    # Exactly one leader again, soon: either the old one renewing on the new master or an
    # election there (at most a lease after the sentinels agree).
    new_leader = the_leader(replicas, timeout_s=lease_ms / 1000 * 3)
    held = epochs_held(database_url, cluster)
    assert all(len(holders) == 1 for holders in held.values()), held
    print(f"history: {history(database_url, cluster)}")

    key_survived = (seen.key_at_promotion or "").startswith(f"{leader.instance_id}|")
    reachable_in_time = deadline is not None and seen.sentinels_agree_s + 0.15 < deadline
    if right_after_a_renewal:
        assert key_survived and reachable_in_time, seen.summary()
    if key_survived and reachable_in_time:
        # The new master had the leader's key and Sentinel named it before the leader's renew
        # deadline: no election, no new epoch.
        assert new_leader is leader and epoch_of(new_leader) == epoch, history(database_url, cluster)
        assert _acquired(database_url, cluster) == acquired_before, history(database_url, cluster)
        assert (seen.key_after_first_write or "") == seen.key_at_promotion, "the renewal kept the same token"

    # Some seconds later Sentinel turns the old master into a replica of the new one and kills
    # its clients; the connections still open to it (followers, pub/sub) must cost nothing.
    wait_for(lambda: topology.role(topology.master_port) == "slave", 30, "the old master reconfigured as replica")
    stable_epoch = epoch_of(new_leader)
    time.sleep(lease_ms / 1000 * 2)
    after = the_leader(replicas, timeout_s=lease_ms / 1000 * 2)
    assert after is new_leader and epoch_of(after) == stable_epoch, history(database_url, cluster)
    held = epochs_held(database_url, cluster)
    assert all(len(holders) == 1 for holders in held.values()), held
    with _client(topology.replica_port) as m:
        assert (m.get(key) or "").startswith(f"{after.instance_id}|")
    for r in replicas:
        assert r.alive(), r.log()


def test_unreachable_sentinels_exit_1_with_one_line(cluster: str, database_url: str) -> None:
    ports = [free_port() for _ in range(3)]
    url = f"redis+sentinel://{','.join(f'{HOST}:{p}' for p in ports)}/{MASTER_NAME}"
    env = {
        **cluster_env(cluster, url, database_url),
        "HAEXEC_STARTUP_TIMEOUT_S": "2",
        "HAEXEC_INSTANCE_ID": "lonely",
        "HAEXEC_HTTP": f"{HOST}:{free_port()}",
    }
    started = time.monotonic()
    result = run_cli(["run"], env, timeout_s=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "redis" in line and "unreachable after 2s" in line and MASTER_NAME in line, line
    assert all(str(p) in line for p in ports), line
    assert len(line) < 600, line
    # Start-up gives up after HAEXEC_STARTUP_TIMEOUT_S (plus the interpreter's own start).
    assert elapsed < 2 + 8, elapsed


def test_startup_error_never_shows_the_passwords(cluster: str, database_url: str) -> None:
    ports = [free_port() for _ in range(2)]
    url = f"redis+sentinel://:hunter2@{HOST}:{ports[0]},{HOST}:{ports[1]}/{MASTER_NAME}?sentinel_password=hunter3"
    env = {**cluster_env(cluster, url, database_url), "HAEXEC_STARTUP_TIMEOUT_S": "1", "HAEXEC_INSTANCE_ID": "x"}
    env["HAEXEC_HTTP"] = f"{HOST}:{free_port()}"
    result = run_cli(["run"], env, timeout_s=60)
    assert result.returncode == 1
    assert "hunter2" not in result.stderr and "hunter3" not in result.stderr, result.stderr
