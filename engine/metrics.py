"""Signal pipeline metrics (prometheus-client, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SIGNALS = Counter("haexec_signals_total", "Signals by outcome", ["outcome"])
SIGNAL_LATENCY = Histogram(
    "haexec_signal_latency_seconds",
    "Intake to outcome",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
IN_DOUBT = Gauge("haexec_in_doubt", "Signals currently in doubt (held for an operator)")
HALTED = Gauge("haexec_halted", "1 while the cluster's kill switch is on (as this replica last read it)")
DUPLICATES = Counter("haexec_duplicate_orders_total", "Orders found twice under one tag at the broker")

for _outcome in ("executed", "rejected", "failed", "in_doubt", "expired"):
    SIGNALS.labels(_outcome)

# Supervised loops (engine/supervision.py), one series per loop name.
LOOP_RESTARTS = Counter("haexec_loop_restarts_total", "Supervised loops restarted (no heartbeat, or died)", ["loop"])
LOOP_HEARTBEAT_AGE = Gauge("haexec_loop_heartbeat_age_seconds", "Since a supervised loop's last heartbeat", ["loop"])
LOOP_FAILED = Gauge("haexec_loop_failed", "1 while a supervised loop is failed (its restart budget spent)", ["loop"])
