"""A sampler of what the cluster looks like from outside: the Redis key (every ~10 ms) and
each answering replica's /leader (every ~100 ms). Used for detection times and the timeline;
never for the checker's verdicts, which come from the database and the broker only."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

import redis

from coordinator.keys import holder_instance
from haexec.drill.cluster import DrillCluster

KEY_EVERY_S = 0.01
HTTP_EVERY_S = 0.1


@dataclass(frozen=True)
class KeySample:
    at: float
    holder: str | None  # the instance id in the key (None: no key, or Redis unreachable)
    ok: bool


@dataclass(frozen=True)
class LeaderSample:
    at: float
    instance: str
    leader: bool


class Monitor:
    def __init__(self, cluster: DrillCluster) -> None:
        self.cluster = cluster
        self.keys: list[KeySample] = []
        self.leaders: list[LeaderSample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client = redis.Redis.from_url(
            cluster.servers.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
        )
        self._thread = threading.Thread(target=self._loop, name="haexec-drill-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def _loop(self) -> None:
        next_http = 0.0
        while not self._stop.is_set():
            now = time.time()
            try:
                sample = KeySample(now, holder_instance(self._client.get(self.cluster.key)), True)
            except redis.RedisError:
                sample = KeySample(now, None, False)
            with self._lock:
                self.keys.append(sample)
            if time.monotonic() >= next_http:
                next_http = time.monotonic() + HTTP_EVERY_S
                for r in list(self.cluster.replicas):
                    if not r.answering():
                        continue
                    status = r.get("/leader", timeout_s=0.25)[0]
                    if status:
                        with self._lock:
                            self.leaders.append(LeaderSample(time.time(), r.instance_id, status == 200))
            self._stop.wait(KEY_EVERY_S)

    # ---- questions about a window ----

    def key_left(self, holder: str, after: float) -> float | None:
        """First time after `after` the key no longer named `holder` (Redis reachable)."""
        with self._lock:
            samples = self.keys[bisect_left([s.at for s in self.keys], after) :]
        for s in samples:
            if s.ok and s.holder != holder:
                return s.at
        return None

    def stopped_leading(self, instance: str, after: float) -> float | None:
        """First time after `after` that `instance` answered /leader with something else than 200."""
        with self._lock:
            samples = [s for s in self.leaders if s.at > after and s.instance == instance]
        for s in samples:
            if not s.leader:
                return s.at
        return None

    def leader_samples(self, instance: str, start: float, end: float) -> list[LeaderSample]:
        with self._lock:
            return [s for s in self.leaders if s.instance == instance and start <= s.at <= end]

    def all_leader_samples(self) -> list[LeaderSample]:
        with self._lock:
            return list(self.leaders)
