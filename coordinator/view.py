"""What the cluster looks like from the outside: Redis holder, DB holder, and whether they
agree. Read straight from both stores, so it works with no replica running."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from common.errors import first_line
from coordinator.elector import DB_ERRORS
from coordinator.epoch import EpochStore
from coordinator.keys import holder_instance, leader_key
from coordinator.registry import list_replicas


@dataclass
class ClusterView:
    cluster: str
    redis_leader: str | None = None
    db_leader: str | None = None
    epoch: int | None = None
    db_heartbeat_age_ms: float | None = None
    db_released: bool = False
    stale_leader: bool = False
    split_brain: bool = False
    lease_pttl_ms: int | None = None
    replicas: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def leader(self) -> dict[str, Any] | None:
        """The replica that may act: the DB holder, alive, and not contradicted by Redis."""
        if self.db_leader is None or self.db_released or self.stale_leader or self.split_brain:
            return None
        return {"instance_id": self.db_leader, "epoch": self.epoch}

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["leader"] = self.leader
        return out


def read_view(client: redis.Redis, epochs: EpochStore, stale_after_ms: int, with_replicas: bool = True) -> ClusterView:
    view = ClusterView(cluster=epochs.cluster)
    try:
        key = leader_key(epochs.cluster)
        with client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            value, pttl = pipe.execute()
        view.redis_leader = holder_instance(value)
        view.lease_pttl_ms = int(pttl) if int(pttl) >= 0 else None
        if with_replicas:
            view.replicas = list_replicas(client, epochs.cluster)
    except redis.RedisError as e:
        view.errors.append(f"redis: {e}")
    try:
        record = epochs.read()
    except DB_ERRORS as e:
        view.errors.append(f"database: {first_line(e)}")
    else:
        view.epoch = record.epoch
        view.db_leader = record.instance_id
        view.db_released = record.released
        view.db_heartbeat_age_ms = record.heartbeat_age_ms
        view.stale_leader = record.instance_id is not None and not record.released and record.stale(stale_after_ms)
        held = record.held(stale_after_ms)
        view.split_brain = held and view.redis_leader is not None and view.redis_leader != record.instance_id
    return view
