"""Coordinator metrics (prometheus-client, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from coordinator.epoch import Reason

IS_LEADER = Gauge("haexec_is_leader", "1 while this replica holds a valid lease and epoch")
LEADER_EPOCH = Gauge("haexec_leader_epoch", "Epoch this replica leads under (0 when following)")
LEADERSHIP_CHANGES = Counter("haexec_leadership_changes_total", "Leadership changes of this replica", ["event"])
SPLIT_BRAIN = Counter("haexec_split_brain_total", "Redis holder, DB holder and self disagreed")
DB_SYNC_ATTEMPTS = Counter("haexec_db_sync_attempts_total", "Leader-record reads and writes tried")
DB_SYNC_FAILURES = Counter("haexec_db_sync_failures_total", "Leader-record reads and writes failed")
LAST_HEARTBEAT = Gauge("haexec_last_heartbeat_timestamp_seconds", "Unix time of this leader's last DB heartbeat")
LEASE_RENEW_SECONDS = Histogram(
    "haexec_lease_renew_seconds",
    "Round trip of a lease renewal",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CAS_LOST = Counter("haexec_epoch_cas_lost_total", "Won the Redis key but lost the epoch CAS")
LEASE_REASSERTED = Counter("haexec_lease_reasserted_total", "Leader re-set its key after Redis lost it")

# Labelled series exist only once touched; create the ones alert rules count from, at 0, so
# that increase() sees the first real event.
for _event in (Reason.ACQUIRED, Reason.SIGTERM, Reason.SWITCHOVER, Reason.LEASE_EXPIRED):
    LEADERSHIP_CHANGES.labels(_event)
