"""Plan metrics (prometheus-client). One PlanMetrics per registry: the replica's is on the
default registry; tests and benchmarks give their own."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class PlanMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.checks = Counter(
            "haexec_plan_condition_checks_total",
            "Condition evaluations by type and value",
            ["type", "value"],
            registry=registry,
        )
        self.failures = Counter(
            "haexec_plan_condition_failures_total",
            "Condition checks that raised (a family's fault), by type",
            ["type"],
            registry=registry,
        )
        self.check_seconds = Histogram(
            "haexec_plan_condition_check_seconds",
            "One condition's evaluation",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=registry,
        )
        self.round_seconds = Histogram(
            "haexec_plan_round_seconds",
            "One evaluation round of the affected plans",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=registry,
        )
        self.data = Counter(
            "haexec_plan_data_requests_total",
            "Condition reads of bars and ticks: hit (served from the round's shared read) or miss",
            ["result"],
            registry=registry,
        )
        self.active = Gauge("haexec_plans_active", "Pending plans the leader evaluates", registry=registry)
        self.executions = Counter("haexec_plan_executions_total", "Plans whose signal was inserted", registry=registry)
        self.after_cancel = Gauge(
            "haexec_plan_executions_after_cancel",
            "Cancelled or expired plans that have a signal (must stay 0)",
            registry=registry,
        )
        self.patterns = Gauge(
            "haexec_pattern_history_rows", "Rows in pattern_history for this cluster", registry=registry
        )
        for result in ("hit", "miss"):
            self.data.labels(result)


_default: PlanMetrics | None = None


def default_metrics() -> PlanMetrics:
    global _default
    if _default is None:
        _default = PlanMetrics()
    return _default
