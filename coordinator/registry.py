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
    keys = sorted(client.scan_iter(match=replica_key(cluster, "*"), count=100))
    if not keys:
        return []
    out = []
    for raw in client.mget(keys):
        if raw:
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
    return sorted(out, key=lambda r: str(r.get("instance_id")))


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
        self._client.set(self._key, json.dumps(self._describe()), px=self._ttl_ms)

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
