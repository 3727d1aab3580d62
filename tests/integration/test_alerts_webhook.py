"""haexec.alerts end to end, configured from the environment as the replica will be, against
a local HTTP receiver: delivery latency, the default retry budget against a receiver that
never answers, and recovery once a receiver comes back."""

from __future__ import annotations

import logging
import socket
import statistics
import time
from collections.abc import Iterator

import pytest

from haexec import alerts
from haexec.alerts import AlertSink
from tests.unit.test_alerts import Receiver, closed_port, dropped, sent


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


def from_env(url: str, **extra: str) -> AlertSink:
    sink = AlertSink.from_env({"HAEXEC_ALERT_WEBHOOK": url, **extra}, "it", "replica-1")
    assert isinstance(sink, AlertSink)
    return sink


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


def latencies(receiver: Receiver, emitted: dict[int, float]) -> list[float]:
    return [h.received - emitted[h.body["seq"]] for h in receiver.delivered]


@pytest.mark.parametrize("mode", ["paced", "burst"])
def test_delivery_latency_p99_under_a_second(receiver: Receiver, mode: str) -> None:
    """Emit to receipt over 200 alerts: one at a time (paced), or all at once (burst: the
    later ones also wait behind the earlier ones in the queue)."""
    sink = from_env(f"{receiver.url}/hook", HAEXEC_ALERT_WEBHOOK_TOKEN="it-token")
    emitted: dict[int, float] = {}
    try:
        for seq in range(200):
            emitted[seq] = time.perf_counter()
            sink.emit(alerts.LEADERSHIP_CHANGE, alerts.INFO, "latency probe", seq=seq)
            if mode == "paced":
                receiver.wait_delivered(seq + 1)
        receiver.wait_delivered(200)
    finally:
        sink.stop(2)
    got = sorted(latencies(receiver, emitted))
    assert len(got) == 200
    p50, p99 = percentile(got, 50), percentile(got, 99)
    print(
        f"\nalert latency ({mode}, 200 alerts): p50={p50 * 1000:.2f}ms p99={p99 * 1000:.2f}ms "
        f"max={got[-1] * 1000:.2f}ms"
    )
    assert p99 <= 1.0


def test_default_policy_gives_up_within_its_five_second_budget(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that accepts connections and never answers: 2 s request timeouts, backoff
    between, and no more than ~5 s spent on the alert before it is dropped and logged once."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)  # the kernel completes the handshakes; nobody ever reads
    port = blackhole.getsockname()[1]
    sink = from_env(f"http://127.0.0.1:{port}/hook?sig=qsecret", HAEXEC_ALERT_WEBHOOK_TOKEN="it-token")
    before = dropped(alerts.DELIVERY_FAILED)
    try:
        with caplog.at_level(logging.WARNING, logger="haexec.alerts"):
            started = time.monotonic()
            sink.emit(alerts.SPLIT_BRAIN, alerts.CRITICAL, "split brain", epoch=9)
            assert sink.flush(15)
            elapsed = time.monotonic() - started
    finally:
        sink.stop(1)
        blackhole.close()
    print(f"\nblackhole receiver: alert dropped after {elapsed:.2f}s")
    assert 4.0 <= elapsed <= 5.6
    assert dropped(alerts.DELIVERY_FAILED) == before + 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "split_brain" in line and "timed out" in line
    assert "qsecret" not in line and "it-token" not in line


def test_alerts_flow_again_once_the_receiver_is_back(receiver: Receiver) -> None:
    down = from_env(f"http://127.0.0.1:{closed_port()}/hook")
    before_failed = dropped(alerts.DELIVERY_FAILED)
    try:
        down.emit(alerts.STALE_LEADER, alerts.ERROR, "stale leader", db_leader="b")
        assert down.flush(10)
    finally:
        down.stop(1)
    assert dropped(alerts.DELIVERY_FAILED) == before_failed + 1

    up = from_env(f"{receiver.url}/hook")
    before_sent = sent(alerts.STALE_LEADER)
    try:
        up.emit(alerts.STALE_LEADER, alerts.ERROR, "stale leader", db_leader="b")
        (hit,) = receiver.wait_delivered(1)
    finally:
        up.stop(2)
    assert hit.body["kind"] == "stale_leader" and hit.body["instance_id"] == "replica-1"
    assert sent(alerts.STALE_LEADER) == before_sent + 1
