"""A whole cluster in one process, driven by hand: electors sharing one fakeredis server and
one in-memory epoch store, all on one FakeClock. No threads are started, nothing sleeps."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from common.clock import FakeClock
from coordinator.config import ElectionConfig
from coordinator.elector import Elector, OnStarted, OnStopped
from coordinator.lease import RedisLease
from tests.unit.memory_store import MemoryEpochStore

CLUSTER = "unit"


class Cluster:
    def __init__(self, cfg_overrides: dict[str, int] | None = None) -> None:
        self.name = CLUSTER
        self.overrides = cfg_overrides or {}
        self.clock = FakeClock()
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeRedis(server=self.server, decode_responses=True)
        base = self.config("probe")
        self.store = MemoryEpochStore(self.name, self.clock, base.stale_after_ms, base.handoff_ms)
        self.key = f"haexec:{self.name}:leader"
        self.events = f"haexec:{self.name}:events"
        self.electors: dict[str, Elector] = {}
        self.leases: dict[str, RedisLease] = {}
        self.clients: dict[str, fakeredis.FakeRedis] = {}

    def config(self, instance: str) -> ElectionConfig:
        return ElectionConfig(cluster=self.name, instance_id=instance, **self.overrides)

    def elector(
        self,
        instance: str,
        on_started: OnStarted | None = None,
        on_stopped: OnStopped | None = None,
        store: Any = None,
        may_lead: Callable[[], bool] | None = None,
    ) -> Elector:
        cfg = self.config(instance)
        client = fakeredis.FakeRedis(server=self.server, decode_responses=True)
        lease = RedisLease(client, cfg.cluster, instance, cfg.lease_ms, self.clock)
        elector = Elector(
            cfg,
            lease,
            store if store is not None else self.store,  # type: ignore[arg-type]
            clock=self.clock,
            on_started_leading=on_started,
            on_stopped_leading=on_stopped,
            rng=random.Random(len(self.electors)),
            may_lead=may_lead,
        )
        self.electors[instance] = elector
        self.leases[instance] = lease
        self.clients[instance] = client
        return elector

    def holder(self) -> str | None:
        return self.redis.get(self.key)

    def reasons(self) -> list[tuple[str, int, str]]:
        """leadership_history, oldest first, as (instance, epoch, reason)."""
        return [(h.instance_id, h.epoch, h.reason) for h in self.store.rows]

    def close(self) -> None:
        for elector in self.electors.values():
            elector._callbacks.shutdown(wait=True, cancel_futures=True)


class Events:
    """A subscriber on `haexec:{cluster}:events`, subscribed before the test acts."""

    def __init__(self, client: fakeredis.FakeRedis, channel: str) -> None:
        self._pubsub = client.pubsub()
        self._pubsub.subscribe(channel)
        first = self._pubsub.get_message(timeout=1.0)
        assert first is not None and first["type"] == "subscribe"

    def drain(self) -> list[str]:
        out: list[str] = []
        while (message := self._pubsub.get_message(timeout=0)) is not None:
            if message["type"] == "message":
                out.append(message["data"])
        return out

    def close(self) -> None:
        self._pubsub.close()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**cfg_overrides: int) -> Cluster:
        cluster = Cluster(cfg_overrides)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def cl(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


@pytest.fixture
def events(cl: Cluster) -> Iterator[Events]:
    subscriber = Events(cl.redis, cl.events)
    yield subscriber
    subscriber.close()


@pytest.fixture
def echo() -> Iterator[int]:
    """A local TCP server that sends back what it reads: the drill's fault proxy talks through
    it, and to an HTTP client it answers as a socket connected to itself does."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()
