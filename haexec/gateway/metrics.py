"""The gateway's Prometheus metrics, in a registry of its own (the process serves nothing else)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from haexec.gateway.promise import Reason

# haexec_gateway_calls_total{call, outcome}: call is send, modify, close, cancel, account,
# positions, orders, quote, find_by_tag or journal; outcome a venue outcome (done, rejected,
# unknown, expired), replayed (answered from the journal), refused (by the promise),
# in_flight, busy, error (nothing sent) or ok (a read).
# Refusals beyond the promise's own reasons: the database could not confirm an epoch; the tag
# is on the terminal now; the terminal is held by a call that outlived its deadline; the
# terminal lost its connection (haexec/gateway/terminal.py).
REFUSALS = (*(r.value for r in Reason), "unconfirmed", "tag_in_flight", "terminal_busy", "terminal_disconnected")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "haexec_gateway_calls_total", "Calls answered, by call and outcome", ["call", "outcome"], registry=r
        )
        self.refusals = Counter(
            "haexec_gateway_refusals_total", "Calls refused, nothing sent, by reason", ["reason"], registry=r
        )
        self.promise_epoch = Gauge("haexec_gateway_promise_epoch", "The promised (highest accepted) epoch", registry=r)
        self.journal_entries = Gauge("haexec_gateway_journal_entries", "order_send rows in the journal", registry=r)
        self.journal_bytes = Gauge("haexec_gateway_journal_bytes", "Size of the journal files", registry=r)
        self.journal_pruned = Counter(
            "haexec_gateway_journal_pruned_total", "Settled journal rows pruned (older than the days kept)", registry=r
        )
        self.terminal_connected = Gauge(
            "haexec_gateway_terminal_connected", "1 while the terminal reports a trade-server connection", registry=r
        )
        self.terminal_busy = Gauge(
            "haexec_gateway_terminal_busy_seconds",
            "How long the call on the terminal has run past its deadline (0: none)",
            registry=r,
        )
        self.in_progress = Gauge(
            "haexec_gateway_calls_in_progress", "Calls in the gateway: waiting for the terminal or on it", registry=r
        )
        self.seconds = Histogram(
            "haexec_gateway_call_seconds",
            "Time in the gateway per call, from arrival to answer",
            ["call"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        # Labelled series exist once touched: create every one at 0, so an alert's increase()
        # sees the first refusal as a change, not the birth of a series.
        for reason in REFUSALS:
            self.refusals.labels(reason)
