"""Market data metrics (prometheus-client). One set per registry, so tests can count on a
registry of their own while the process exports the default one."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

CACHE_RESULTS = ("hit", "miss", "stale", "refused")


class MarketMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.cache = Counter(
            "haexec_market_cache_requests_total",
            "Bar cache requests: hit (no fetch), miss (fetched what closed since), stale (source failed, "
            "served within the age accepted), refused (nothing young enough to serve)",
            ["result"],
            registry=registry,
        )
        self.up = Gauge(
            "haexec_market_data_up", "1 while the last read of the source succeeded", ["source"], registry=registry
        )
        self.tick_age = Gauge(
            "haexec_market_tick_age_seconds", "Age of the latest tick read, per symbol", ["symbol"], registry=registry
        )
        for result in CACHE_RESULTS:
            self.cache.labels(result)


_default: MarketMetrics | None = None
_lock = threading.Lock()


def default_metrics() -> MarketMetrics:
    """The process's metrics on the default registry, created once."""
    global _default
    with _lock:
        if _default is None:
            _default = MarketMetrics()
        return _default
