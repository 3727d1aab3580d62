"""The coordinator as the rest of the process sees it: start, stop, fence, look.

It owns its own connections: the HA loop has a Redis client and a one-connection pool that
nothing else uses, so no other work in the process can queue in front of a renewal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import redis

from common.clock import SYSTEM_CLOCK, Clock
from common.errors import first_line
from coordinator.config import ElectionConfig
from coordinator.elector import DB_ERRORS, Elector, Fence, OnStarted, OnStopped, Role
from coordinator.epoch import EpochStore, HistoryEntry, Reason
from coordinator.events import EventListener
from coordinator.fencing import NotLeader, fenced
from coordinator.lease import RedisLease, redis_client
from coordinator.registry import RegistryPublisher, list_replicas
from coordinator.view import ClusterView, read_view
from db.session import SessionLimits, make_pool

log = logging.getLogger("haexec.coordinator")

VIEW_MAX_AGE_MS = 250.0  # how old an answer of view() may be


class Coordinator:
    def __init__(
        self,
        cfg: ElectionConfig,
        redis_url: str,
        database_url: str,
        clock: Clock = SYSTEM_CLOCK,
        on_started_leading: OnStarted | None = None,
        on_stopped_leading: OnStopped | None = None,
        describe: Callable[[], dict[str, Any]] | None = None,
        may_lead: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        limits = SessionLimits(cfg.db_timeout_ms, application_name=f"haexec-ha-{cfg.instance_id}")
        redis_timeout_s = cfg.renew_ms / 2000.0
        self._ha_redis = redis_client(redis_url, redis_timeout_s, f"haexec-ha-{cfg.instance_id}")
        self._side_redis = redis_client(redis_url, redis_timeout_s, f"haexec-side-{cfg.instance_id}")
        self._ha_pool = make_pool(database_url, limits, name="haexec-ha", min_size=1, max_size=1)
        view_limits = SessionLimits(cfg.db_timeout_ms, application_name=f"haexec-view-{cfg.instance_id}")
        self._view_pool = make_pool(database_url, view_limits, name="haexec-view", min_size=1, max_size=2)
        self.epochs = EpochStore(self._ha_pool, cfg.cluster, cfg.stale_after_ms, cfg.handoff_ms)
        self._view_epochs = EpochStore(self._view_pool, cfg.cluster, cfg.stale_after_ms, cfg.handoff_ms)
        self.lease = RedisLease(self._ha_redis, cfg.cluster, cfg.instance_id, cfg.lease_ms, clock)
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self.elector = Elector(
            cfg,
            self.lease,
            self.epochs,
            clock=clock,
            on_started_leading=self._started_leading,
            on_stopped_leading=self._stopped_leading,
            may_lead=may_lead,
        )
        self._describe_extra = describe or (lambda: {})
        self._view_lock = threading.Lock()
        self._view: ClusterView | None = None
        self._view_at = 0.0
        self._events = EventListener(
            redis_client(redis_url, None, f"haexec-events-{cfg.instance_id}"), cfg.cluster, self._on_event
        )
        self._registry = RegistryPublisher(
            self._side_redis, cfg.cluster, cfg.instance_id, cfg.registry_ttl_ms, self.describe
        )
        self._thread = threading.Thread(target=self.elector.run, name="haexec-elector", daemon=True)

    # ---- lifecycle ----

    def open(self, timeout_s: float) -> None:
        """Connect the pools; raises psycopg_pool.PoolTimeout when the DB is not reachable."""
        self._ha_pool.open(wait=True, timeout=timeout_s)
        self._view_pool.open(wait=True, timeout=timeout_s)

    def start(self) -> None:
        self._events.start()
        self._registry.start()
        self._thread.start()

    def stop(self, reason: str = Reason.SIGTERM, timeout_s: float | None = None) -> None:
        """Release leadership (if held) and stop every loop."""
        self.elector.stop(reason)
        if self._thread.is_alive():
            self._thread.join(timeout_s if timeout_s is not None else self.cfg.lease_ms / 1000.0 * 2)
        self._events.stop()
        self._registry.stop()
        self._ha_pool.close(timeout=1.0)
        self._view_pool.close(timeout=1.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- this replica's own standing (in memory, always current) ----

    def is_leader(self) -> bool:
        return self.elector.is_leader()

    @property
    def role(self) -> Role:
        return self.elector.role

    @property
    def epoch(self) -> int | None:
        return self.elector.epoch

    def lease_remaining_ms(self) -> float:
        return self.elector.lease_remaining_ms()

    def request_handover(self, target: str | None) -> bool:
        """Switchover: release on the election thread, naming `target` (or no one). False when
        this replica is not leading."""
        return self.elector.request_handover(target)

    def reconsider(self) -> None:
        """`may_lead` changed: the election thread looks again now (a leader that may no
        longer lead releases at once instead of at its next renewal)."""
        self.elector.wake()

    # ---- for the engine ----

    def fence(self, min_remaining_ms: float = 0.0) -> Fence:
        """The epoch to fence with, while the lease is trusted. With `min_remaining_ms`, the
        rule for an action at a venue: the trusted lease must outlive the call. A lease short
        of that right now is given one renew interval to be renewed; then NotLeader."""
        fence = self.elector.fence()
        if fence.remaining_ms >= min_remaining_ms:
            return fence
        deadline = time.monotonic() + self.cfg.renew_ms / 1000.0
        while time.monotonic() < deadline:
            time.sleep(0.005)
            fence = self.elector.fence()
            if fence.remaining_ms >= min_remaining_ms:
                return fence
        raise NotLeader(
            f"{self.cfg.instance_id}: lease of epoch {fence.epoch} has {fence.remaining_ms:.0f} ms left,"
            f" {min_remaining_ms:.0f} ms needed"
        )

    @contextmanager
    def fenced(self, conn: psycopg.Connection) -> Iterator[tuple[psycopg.Cursor, Fence]]:
        """A transaction fenced by this replica's current epoch (NotLeader if it has none)."""
        fence = self.fence()
        with fenced(conn, self.cfg.cluster, fence.epoch) as cur:
            yield cur, fence

    # ---- for operators ----

    def view(self) -> tuple[ClusterView, float]:
        """The cluster view and its age in ms. Read from both stores at most once per
        VIEW_MAX_AGE_MS, one reader at a time: a burst of /coordinator/leader polls during a
        takeover is answered from memory instead of queueing reads behind the new leader's."""
        with self._view_lock:
            now = self._clock.now_ms()
            if self._view is None or now - self._view_at >= VIEW_MAX_AGE_MS:
                self._view = read_view(
                    self._side_redis, self._view_epochs, self.cfg.stale_after_ms, with_replicas=False
                )
                self._view_at = now = self._clock.now_ms()
            return self._view, now - self._view_at

    def announce(self) -> None:
        """Publish this replica's registry entry now (its health or role changed)."""
        self._registry.poke()

    def replicas(self) -> list[dict[str, Any]]:
        return list_replicas(self._side_redis, self.cfg.cluster)

    def history(self, limit: int) -> list[HistoryEntry]:
        return self._view_epochs.history(limit)

    def describe(self) -> dict[str, Any]:
        return {
            "instance_id": self.cfg.instance_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "role": self.elector.role.value,
            "epoch": self.elector.epoch,
            **self._describe_extra(),
        }

    def probe(self) -> dict[str, str]:
        """Each dependency as "ok" or the reason it is not; a live round trip to each store."""
        parts: dict[str, str] = {}
        try:
            self._side_redis.ping()
            parts["redis"] = "ok"
        except redis.RedisError as e:
            parts["redis"] = f"unreachable: {e}"
        try:
            with self._view_pool.connection() as conn:
                conn.execute("SELECT 1")
            parts["database"] = "ok"
        except DB_ERRORS as e:
            parts["database"] = f"unreachable: {first_line(e)}"
        last = self.elector.last_loop_ms
        if not self._thread.is_alive():
            parts["election_loop"] = "stopped"
        elif last is None or self._clock.now_ms() - last > 2 * self.cfg.lease_ms + 1000:
            parts["election_loop"] = "stalled"
        else:
            parts["election_loop"] = "ok"
        return parts

    def _started_leading(self, epoch: int) -> None:
        self._registry.poke()
        if self._on_started:
            self._on_started(epoch)

    def _stopped_leading(self, epoch: int, reason: str) -> None:
        self._registry.poke()
        if self._on_stopped:
            self._on_stopped(epoch, reason)

    def _on_event(self, message: str) -> None:
        log.debug("event: %s", message)
        self.elector.wake(message)
