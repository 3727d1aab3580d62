"""Election timers and their invariants, checked before anything starts (client-go style)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from common.errors import ConfigError

# No timer of the protocol has a use beyond a day; a larger value is a typo (or an extra zero)
# that would make a failover take forever.
MAX_TIMER_MS = 86_400_000


@dataclass(frozen=True)
class ElectionConfig:
    cluster: str
    instance_id: str
    lease_ms: int = 3000
    renew_deadline_ms: int = 2000
    renew_ms: int = 1000
    drift_margin_ms: int = 100
    stale_after_ms: int = 3000
    db_grace_ms: int = 2000
    # Every database session of a replica (statement, lock wait, idle in transaction) is cut
    # off after this, so a paused process cannot hold a row lock that blocks a takeover.
    db_timeout_ms: int = 1000
    cooldown_ms: int = 1000
    handoff_ms: int = 1000
    jitter_ms: int = 10
    registry_ttl_ms: int = 6000

    @classmethod
    def for_lease(cls, cluster: str, instance_id: str, lease_ms: int, **overrides: int) -> ElectionConfig:
        """Defaults scaled from the lease (3000 -> 2000 / 1000 / 100), then overrides."""
        base = {
            "lease_ms": lease_ms,
            "renew_deadline_ms": lease_ms * 2 // 3,
            "renew_ms": lease_ms // 3,
            "drift_margin_ms": max(20, lease_ms // 30),
            "stale_after_ms": lease_ms,
            "db_grace_ms": lease_ms * 2 // 3,
            "db_timeout_ms": lease_ms // 3,
            "cooldown_ms": lease_ms // 3,
            "handoff_ms": lease_ms // 3,
        }
        base.update(overrides)
        return cls(cluster=cluster, instance_id=instance_id, **base)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def trusted_ms(self) -> int:
        """How long after sending a successful SET/PEXPIRE the lease is trusted."""
        return self.lease_ms - self.drift_margin_ms

    def validate(self) -> None:
        if not self.cluster or ":" in self.cluster or "{" in self.cluster or "}" in self.cluster:
            raise ConfigError("cluster", f"must be non-empty without ':', '{{', '}}' (got {self.cluster!r})")
        if not self.instance_id or any(c in self.instance_id for c in " |:"):
            raise ConfigError("instance_id", f"must be non-empty without spaces, '|' or ':' (got {self.instance_id!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.name.endswith("_ms"):
                continue
            if type(value) is not int or value <= 0:
                raise ConfigError(f.name, f"must be a positive integer of milliseconds (got {value!r})")
            if value > MAX_TIMER_MS:
                raise ConfigError(f.name, f"must be at most {MAX_TIMER_MS} ms, a day (got {value})")
        if not self.lease_ms > self.renew_deadline_ms:
            raise ConfigError("lease_ms", f"must be > renew_deadline_ms ({self.lease_ms} <= {self.renew_deadline_ms})")
        if not self.renew_deadline_ms > 1.2 * self.renew_ms:
            raise ConfigError(
                "renew_deadline_ms",
                f"must be > 1.2 x renew_ms ({self.renew_deadline_ms} <= 1.2 x {self.renew_ms})",
            )
        if not self.renew_deadline_ms <= self.trusted_ms:
            raise ConfigError(
                "renew_deadline_ms",
                f"must be <= lease_ms - drift_margin_ms ({self.renew_deadline_ms} > {self.trusted_ms})",
            )
        if not self.stale_after_ms >= self.lease_ms:
            raise ConfigError("stale_after_ms", f"must be >= lease_ms ({self.stale_after_ms} < {self.lease_ms})")
        if not self.db_grace_ms < self.stale_after_ms:
            raise ConfigError("db_grace_ms", f"must be < stale_after_ms ({self.db_grace_ms} >= {self.stale_after_ms})")
        if not self.db_timeout_ms < self.trusted_ms:
            raise ConfigError(
                "db_timeout_ms",
                f"must be < lease_ms - drift_margin_ms ({self.db_timeout_ms} >= {self.trusted_ms})",
            )
        if not self.db_timeout_ms <= self.db_grace_ms:
            raise ConfigError("db_timeout_ms", f"must be <= db_grace_ms ({self.db_timeout_ms} > {self.db_grace_ms})")
