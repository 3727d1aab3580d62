"""Position manager metrics (prometheus-client). One set per registry, so a test counts on a
registry of its own while the process exports the default one."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# ok: sent and verified; failed: the venue failed the call (error, timeout, OTHER); refused:
# the fail-safe stopped it before it was sent; deferred: frozen at the venue, tried again later.
SL_RESULTS = ("ok", "failed", "refused", "deferred")


class PositionMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.sl_updates = Counter(
            "haexec_sl_updates_total", "Stop-loss updates by result", ["result"], registry=registry
        )
        self.loop = Histogram(
            "haexec_position_manager_loop_seconds",
            "One manager loop: read the book and the venue, decide, send, verify, persist",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.without_sl = Gauge(
            "haexec_positions_without_sl", "Managed positions with no stop at the venue", registry=registry
        )
        self.managed = Gauge("haexec_positions_managed", "Open positions the leader manages", registry=registry)
        self.open_circuits = Gauge(
            "haexec_position_circuits_open", "Positions whose circuit breaker is open (skipped)", registry=registry
        )
        self.naked_closed = Counter(
            "haexec_positions_naked_closed_total",
            "Positions closed because they had no stop past HAEXEC_SL_DEADLINE_MS",
            registry=registry,
        )
        self.journal_fallbacks = Counter(
            "haexec_journal_fallbacks_total",
            "Journal rows written to the local fallback file because the database could not take them",
            registry=registry,
        )
        self.partials = Counter(
            "haexec_partial_closes_total",
            "Partial closes the rules asked for, by result (done, refused: due again later, unknown: never resent)",
            ["result"],
            registry=registry,
        )
        for result in SL_RESULTS:
            self.sl_updates.labels(result)
        for result in ("done", "refused", "unknown"):
            self.partials.labels(result)


_default: PositionMetrics | None = None
_lock = threading.Lock()


def default_metrics() -> PositionMetrics:
    """The process's metrics on the default registry, created once."""
    global _default
    with _lock:
        if _default is None:
            _default = PositionMetrics()
        return _default
