"""Replicas announce themselves in Redis with a TTL, so `haexec status` can list them with
no replica's help. A missing entry means a dead or cut-off replica."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from coordinator.keys import replica_key

log = logging.getLogger("haexec.coordinator.registry")


def list_replicas(client: redis.Redis, cluster: str) -> list[dict[str, Any]]:
    """Every registered replica's entry, each with `heartbeat_age_ms` and `unresponsive` when
    it says how long it lives (see heartbeat)."""
    keys = sorted(client.scan_iter(match=replica_key(cluster, "*"), count=100))
    if not keys:
        return []
    with client.pipeline(transaction=False) as pipe:
        pipe.mget(keys)
        for key in keys:
            pipe.pttl(key)
        raws, *pttls = pipe.execute()
    out = []
    for raw, pttl in zip(raws, pttls, strict=True):
        if not raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append({**entry, **heartbeat(entry.get("ttl_ms"), int(pttl))})
    return sorted(out, key=lambda r: str(r.get("instance_id")))


def heartbeat(ttl_ms: object, pttl_ms: int) -> dict[str, Any]:
    """How long ago the entry was published, from what is left of its TTL: Redis's clock only,
    so no two hosts' clocks meet. A replica publishes every third of the TTL; past half of it,
    it has missed a publication (paused, wedged, cut off from Redis) and is unresponsive, even
    though its last entry still says leader and healthy."""
    if type(ttl_ms) is not int or ttl_ms <= 0 or pttl_ms < 0:
        return {}
    age = max(0, ttl_ms - pttl_ms)
    return {"heartbeat_age_ms": age, "unresponsive": age > ttl_ms / 2}


class RegistryPublisher:
    def __init__(
        self,
        client: redis.Redis,
        cluster: str,
        instance_id: str,
        ttl_ms: int,
        describe: Callable[[], dict[str, Any]],
    ) -> None:
        self._client = client
        self._key = replica_key(cluster, instance_id)
        self._ttl_ms = ttl_ms
        self._describe = describe
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haexec-registry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(self) -> None:
        entry = {**self._describe(), "ttl_ms": self._ttl_ms}  # readers tell a stale entry by it
        self._client.set(self._key, json.dumps(entry), px=self._ttl_ms)

    def poke(self) -> None:
        """Publish now (the role changed) rather than at the next interval."""
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        try:
            self._client.delete(self._key)
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poke.clear()
            try:
                self.publish()
            except redis.RedisError as e:
                log.debug("registry publish failed: %s", e)
            self._poke.wait(self._ttl_ms / 3000.0)
